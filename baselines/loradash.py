"""LoRA-Dash (Si et al., ICLR 2025) through the `loradash` library: LoRA, then s amplified directions.

Counts per adapted (out x in) matrix at LoRA rank r and s = num_directions:
- trainable: r (in + out) for LoRA's A and B, plus the s scalars lambda.
- stored: trainable, plus what the library saves beside them: U_s (out x s), Vh_s (s x in), the chosen
  indices (s) and their singular values (s), the launch flag (1) and the forward-call counter (1). Only A, B,
  lambda, U_s and Vh_s change the outputs; the 2s + 2 bookkeeping numbers are counted because they are in the
  file (`stored` is what `save_adapter` writes) and a pre-launch checkpoint needs them to resume.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

from torch import nn

import loradash
from loradash.config import PRELAUNCH_CLOCKS

from .base import Shape, check_choice, check_int, check_number, register
from .lora import Lora

_PREFIX = "base_model.model."


@register
class LoraDash(Lora):
    """LoRA's hyper-parameters plus s (`num_directions`), t (`prelaunch_steps`), eps and the launch clock."""

    name = "loradash"
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {
            **Lora.defaults,
            "num_directions": 8,
            "prelaunch_steps": 100,
            "change_rate_eps": 1e-8,
            "prelaunch_clock": "optimizer_step",
        }
    )

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        check_int(params, "num_directions", minimum=1)
        check_int(params, "prelaunch_steps", minimum=0)
        check_number(params, "change_rate_eps", minimum=0.0)
        check_choice(params, "prelaunch_clock", PRELAUNCH_CLOCKS)
        return super().check_params(params)

    def _wrap(self, model: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        p = self.params
        config = loradash.LoraDashConfig(
            **self.lora_kwargs(target_modules, modules_to_save),
            num_directions=p["num_directions"],
            prelaunch_steps=p["prelaunch_steps"],
            change_rate_eps=p["change_rate_eps"],
            prelaunch_clock=p["prelaunch_clock"],
        )
        return loradash.get_loradash_model(model, config)

    def on_optimizer_step(self, model: nn.Module, global_step: int) -> None:
        loradash.update_loradash(model, global_step)  # launches every layer once global_step reaches t

    def diagnostics(self, model: nn.Module) -> dict[str, Any]:
        """The launch summary: t, how many layers launched, and per layer the chosen directions, their
        singular values and max |lambda| (how far the dash term has moved from zero)."""
        layers = loradash.dash_diagnostics(model)
        return {
            "launch_step": self.params["prelaunch_steps"],
            "prelaunch_clock": self.params["prelaunch_clock"],
            "launched_layers": sum(d["launched"] for d in layers.values()),
            "num_layers": len(layers),
            "layers": {
                name.removeprefix(_PREFIX): {
                    "launched": d["launched"],
                    "indices": d["indices"],
                    "sigma": d["sigma"],
                    "max_abs_lambda": max((abs(x) for x in d["lambda"]), default=0.0),
                }
                for name, d in layers.items()
            },
        }

    @classmethod
    def layer_trainable(
        cls, out_features: int, in_features: int, rank: int, params: Mapping[str, Any]
    ) -> int:
        return super().layer_trainable(out_features, in_features, rank, params) + params["num_directions"]

    @classmethod
    def _extra_stored(cls, layer_shapes: Sequence[Shape], rank: int, params: Mapping[str, Any]) -> int:
        s = params["num_directions"]
        # U_s [out, s] + Vh_s [s, in] + indices [s] + sigma [s] + launched [] + forward_calls []
        return sum(s * (o + i) + 2 * s + 2 for o, i in layer_shapes)

    def load_adapter(
        self, base_model: nn.Module, directory: str | os.PathLike[str], *, is_trainable: bool = False
    ) -> nn.Module:
        # Stock peft refuses a LoRA-Dash folder (peft_type "LORADASH"); the library restores it exactly.
        return loradash.from_pretrained(base_model, directory, is_trainable=is_trainable)
