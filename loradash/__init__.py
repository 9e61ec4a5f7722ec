"""LoRA-Dash (Si et al., ICLR 2025) as a peft LoRA variant.

`import loradash` registers LoRA-Dash with peft: `peft.get_peft_model(model, LoraDashConfig(...))`,
`peft.PeftModel.from_pretrained(base, folder)` and TRL's `SFTTrainer(peft_config=LoraDashConfig(...))` then build
and load LoRA-Dash adapters, and the launch happens by itself after t optimizer steps (`loradash.clock`).

Public API: `LoraDashConfig`, `get_loradash_model`, `update_loradash`, `set_auto_launch`, `LoraDashCallback`,
`select_task_specific_directions`, `from_pretrained`, `export_as_lora`, `LoraDashWarning`, `SVDCache` (the launch's
on-disk SVD cache, enabled by `LoraDashConfig.svd_cache_dir` or `$LORADASH_SVD_CACHE`).
"""

from ._version import __version__
from .clock import LoraDashWarning
from .config import LoraDashConfig
from .export import export_as_lora
from .layer import DashLinear, LoraDashVariant
from .model import (
    dash_diagnostics,
    dash_layers,
    from_pretrained,
    get_loradash_model,
    launch_loradash,
    set_auto_launch,
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
    "__version__",
    "DashLinear",
    "LoraDashCallback",
    "LoraDashConfig",
    "LoraDashWarning",
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
    "set_auto_launch",
    "update_loradash",
    "weight_svd",
]
