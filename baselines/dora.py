"""DoRA (Liu et al., 2024) through peft: LoRA on the direction of W plus a trainable magnitude per output row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import register
from .lora import Lora


@register
class Dora(Lora):
    """peft `LoraConfig(use_dora=True)`: W' = m * (W + (alpha/r) B A) / ||W + (alpha/r) B A||_row."""

    name = "dora"
    plot_color = "#2ca02c"  # green in every plot

    def lora_kwargs(self, target_modules: list[str], modules_to_save: list[str]) -> dict[str, Any]:
        return {**super().lora_kwargs(target_modules, modules_to_save), "use_dora": True}

    @classmethod
    def layer_trainable(
        cls, out_features: int, in_features: int, rank: int, params: Mapping[str, Any]
    ) -> int:
        return (
            super().layer_trainable(out_features, in_features, rank, params) + out_features
        )  # magnitude [out]
