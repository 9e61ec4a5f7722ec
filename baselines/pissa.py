"""PiSSA (Meng et al., 2024) through peft: LoRA initialised on W's top-r singular triplets.

peft's "pissa" init replaces W by the residual W - (alpha/r) B0 A0 in the base model when wrapping, so the
model's output is unchanged at step 0. The saved folder is a plain peft LoRA folder: loading it onto the
original base model runs the same (full, deterministic) SVD again to rebuild the residual, then loads A and B,
so nothing beyond A and B is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from .base import register
from .lora import Lora


@register
class Pissa(Lora):
    """PiSSA's reference scripts use lora_alpha = r (scaling 1) and no dropout: those are the defaults here."""

    name = "pissa"
    plot_color = "#9467bd"  # purple in every plot
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"r": 8, "lora_alpha": None, "lora_dropout": 0.0}
    )
    alpha_per_rank: ClassVar[int] = 1

    def lora_kwargs(self, target_modules: list[str], modules_to_save: list[str]) -> dict[str, Any]:
        # "pissa" is the exact full SVD; the randomized "pissa_niter_k" would not be reproducible at load time.
        return {**super().lora_kwargs(target_modules, modules_to_save), "init_lora_weights": "pissa"}
