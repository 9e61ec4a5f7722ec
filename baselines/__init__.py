"""Every fine-tuning method behind one interface (`Method`), found by name in a registry.

Adding a method is one small file with a `@register`-ed `Method` subclass, plus its import on the registry
line below (importing the module is what registers it).
"""

from . import dora, full, lora, loradash, pissa, vera  # noqa: F401  (the registry line)
from .base import (
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
