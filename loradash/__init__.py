"""LoRA-Dash (Si et al., ICLR 2025) as a peft LoRA variant.

Public API: `LoraDashConfig`, `get_loradash_model`, `update_loradash`, `LoraDashCallback`,
`select_task_specific_directions`, `from_pretrained`, `export_as_lora`, `SVDCache` (the launch's on-disk SVD
cache, enabled by `LoraDashConfig.svd_cache_dir` or `$LORADASH_SVD_CACHE`).
"""

__version__ = "0.1.0"

from .config import LoraDashConfig
from .export import export_as_lora
from .layer import DashLinear, LoraDashVariant
from .model import (
    dash_diagnostics,
    dash_layers,
    from_pretrained,
    get_loradash_model,
    launch_loradash,
    update_loradash,
)
from .selection import LowRankUpdate, TaskSpecificDirections, select_task_specific_directions, weight_svd
from .svd_cache import SVDCache


def __getattr__(name: str):  # LoraDashCallback imports transformers' Trainer machinery: load it on first use
    if name == "LoraDashCallback":
        from .callback import LoraDashCallback

        return LoraDashCallback
    raise AttributeError(name)


__all__ = [
    "DashLinear",
    "LoraDashCallback",
    "LoraDashConfig",
    "LoraDashVariant",
    "LowRankUpdate",
    "SVDCache",
    "TaskSpecificDirections",
    "dash_diagnostics",
    "dash_layers",
    "export_as_lora",
    "from_pretrained",
    "get_loradash_model",
    "launch_loradash",
    "select_task_specific_directions",
    "update_loradash",
    "weight_svd",
]
