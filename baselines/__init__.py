"""Every fine-tuning method behind one interface (`Method`), found by name in a registry.

Adding a method is one small file with a `@register`-ed `Method` subclass: the registry imports every module
of this folder when a method is first looked up.
"""

from .base import (
    METHODS,
    AdapterMethod,
    Method,
    ParamCounts,
    UnknownMethodError,
    available_methods,
    build_method,
    get_method,
    register,
    target_layers,
)
from .budget import base_param_count, matched_ranks, target_layer_shapes

__all__ = [
    "METHODS",
    "AdapterMethod",
    "Method",
    "ParamCounts",
    "UnknownMethodError",
    "available_methods",
    "base_param_count",
    "build_method",
    "get_method",
    "matched_ranks",
    "register",
    "target_layer_shapes",
    "target_layers",
]
