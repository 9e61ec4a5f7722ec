"""VeRA (Kopiczko et al., ICLR 2024) through peft: frozen shared random A, B; trainable scaling vectors.

Per target layer: W x + lambda_b * (B[:out] (lambda_d * (A[:, :in] x))), with lambda_d [r] and lambda_b [out]
trainable. peft 0.21 builds ONE pair A [r, max in], B [max out, r] for the whole model (max over the target
layers) and slices it per layer, so target layers of different shapes are fine; r is one number for all of them
(no rank_pattern). The projections come from `projection_prng_key`; with save_projection=True (default) they
are also written to the adapter file, so loading does not depend on the PRNG of the loading machine, and they
count as stored: r (max in + max out) once per model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

from peft import VeraConfig, get_peft_model
from torch import nn

from .base import AdapterMethod, Shape, check_int, check_number, register


@register
class Vera(AdapterMethod):
    """Default r = 256 (the paper's RoBERTa setting). If r is NOT given and a target layer is smaller, r is capped
    to the smallest min(out, in) at wrap time (recorded in `params`); an explicit r too large is an error."""

    name = "vera"
    plot_color = "#8c564b"  # brown in every plot
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"r": 256, "vera_dropout": 0.0, "d_initial": 0.1, "projection_prng_key": 0, "save_projection": True}
    )

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        check_int(params, "r", minimum=1)
        check_number(params, "vera_dropout", minimum=0.0, maximum=1.0, open_max=True)
        check_number(params, "d_initial", minimum=0.0)
        check_int(params, "projection_prng_key", minimum=0)
        if not isinstance(params["save_projection"], bool):
            raise ValueError(f"save_projection must be a bool, got {params['save_projection']!r}")
        return super().check_params(params)

    def fit_rank(self, layers: Sequence[tuple[str, nn.Linear]]) -> None:
        cap = min(min(layer.out_features, layer.in_features) for _, layer in layers)
        if "r" not in self._given and self.params["r"] > cap:
            self._replace_params(r=cap)
        super().fit_rank(layers)

    def _wrap(self, model: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        p = self.params
        config = VeraConfig(
            r=p["r"],
            target_modules=target_modules,
            modules_to_save=modules_to_save or None,
            vera_dropout=p["vera_dropout"],
            d_initial=p["d_initial"],
            projection_prng_key=p["projection_prng_key"],
            save_projection=p["save_projection"],
        )
        return get_peft_model(model, config)

    @classmethod
    def layer_trainable(
        cls, out_features: int, in_features: int, rank: int, params: Mapping[str, Any]
    ) -> int:
        return rank + out_features  # lambda_d [r] + lambda_b [out]

    @classmethod
    def _extra_stored(cls, layer_shapes: Sequence[Shape], rank: int, params: Mapping[str, Any]) -> int:
        if not params["save_projection"] or not layer_shapes:
            return 0
        max_out = max(o for o, _ in layer_shapes)
        max_in = max(i for _, i in layer_shapes)
        return rank * (max_in + max_out)  # shared A [r, max in] + B [max out, r], stored once
