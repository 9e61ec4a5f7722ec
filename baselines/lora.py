"""LoRA (Hu et al., 2021) through peft: the baseline LoRA-Dash extends, and the parent of DoRA and PiSSA."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from peft import LoraConfig, get_peft_model
from torch import nn

from .base import AdapterMethod, check_int, check_number, register


@register
class Lora(AdapterMethod):
    """W x + (alpha/r) B A x with A: r x in (Kaiming init) and B: out x r (zeros), per target layer.

    lora_alpha=None means `alpha_per_rank` * r (2r for LoRA, as in the LoRA-Dash paper's setups), resolved in
    `params` so the result file records the number that ran. `init_lora_weights` is peft's: True (A
    Kaiming-uniform, peft's and LLM-Adapters' default) or "gaussian" (A ~ N(0, 1/r), what diffusers' DreamBooth
    LoRA scripts and the paper's SDXL runs use); B starts at zero either way.
    """

    name = "lora"
    plot_color = "#1f77b4"  # blue in every plot
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"r": 8, "lora_alpha": None, "lora_dropout": 0.05, "init_lora_weights": True}
    )
    alpha_per_rank: ClassVar[int] = 2

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        check_int(params, "r", minimum=1)
        if params["lora_alpha"] is None:
            params["lora_alpha"] = cls.alpha_per_rank * params["r"]
        check_number(params, "lora_alpha", minimum=1e-12)
        check_number(params, "lora_dropout", minimum=0.0, maximum=1.0, open_max=True)
        init = params.get("init_lora_weights", True)
        if not (init is True or init == "gaussian"):  # `is`: 1 == True, but 1 is not peft's value
            raise ValueError(f"init_lora_weights must be one of [True, 'gaussian'], got {init!r}")
        return super().check_params(params)

    def lora_kwargs(self, target_modules: list[str], modules_to_save: list[str]) -> dict[str, Any]:
        """The LoraConfig fields; subclasses (DoRA, PiSSA, LoRA-Dash) add theirs."""
        p = self.params
        return {
            "r": p["r"],
            "lora_alpha": p["lora_alpha"],
            "lora_dropout": p["lora_dropout"],
            "target_modules": target_modules,
            "modules_to_save": modules_to_save or None,
            "init_lora_weights": p.get("init_lora_weights", True),
        }

    def _wrap(self, model: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        return get_peft_model(model, LoraConfig(**self.lora_kwargs(target_modules, modules_to_save)))

    @classmethod
    def layer_trainable(
        cls, out_features: int, in_features: int, rank: int, params: Mapping[str, Any]
    ) -> int:
        return rank * (in_features + out_features)  # A [r, in] + B [out, r]
