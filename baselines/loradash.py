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
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import loradash
from loradash.config import DIRECTION_SELECTIONS, PRELAUNCH_CLOCKS

from .base import Shape, check_choice, check_int, check_number, first_too_narrow, register
from .lora import Lora

_PREFIX = "base_model.model."
_LAMBDA = "lora_dash_lambda"


@register
class LoraDash(Lora):
    """LoRA's hyper-parameters plus s (`num_directions`), t (`prelaunch_steps`), eps and the launch clock."""

    name = "loradash"
    plot_color = "#d62728"  # red in every plot
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {
            **Lora.defaults,
            "num_directions": 8,
            "prelaunch_steps": 100,
            "change_rate_eps": 1e-8,
            "prelaunch_clock": "optimizer_step",
            # learning rate of the scalars lambda relative to the other parameters (1 = the paper). With Adam a
            # scalar moves by at most about its learning rate per step, so a short run can only give the dash
            # phase the reach of the paper's runs (their scalars' summed post-launch rate) through this ratio.
            "lambda_lr_ratio": 1.0,
            # controls of the selection rule and the dash-only variant (LoraDashConfig documents them); the
            # defaults are the paper's method
            "direction_selection": "change_rate",
            "selection_seed": 0,
            "freeze_lora_after_launch": False,
        }
    )

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        check_int(params, "num_directions", minimum=1)
        check_int(params, "prelaunch_steps", minimum=0)
        check_number(params, "change_rate_eps", minimum=0.0)
        check_choice(params, "prelaunch_clock", PRELAUNCH_CLOCKS)
        check_number(params, "lambda_lr_ratio", minimum=1e-12)
        check_choice(params, "direction_selection", DIRECTION_SELECTIONS)
        check_int(params, "selection_seed", minimum=0)
        if not isinstance(params["freeze_lora_after_launch"], bool):
            raise ValueError(
                f"freeze_lora_after_launch must be true or false, got {params['freeze_lora_after_launch']!r}"
            )
        return super().check_params(params)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._launched_at: dict[str, int] = {}  # layer -> the optimizer step after which it was seen launched

    def _wrap(self, model: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        p = self.params
        config = loradash.LoraDashConfig(
            **self.lora_kwargs(target_modules, modules_to_save),
            num_directions=p["num_directions"],
            prelaunch_steps=p["prelaunch_steps"],
            change_rate_eps=p["change_rate_eps"],
            prelaunch_clock=p["prelaunch_clock"],
            direction_selection=p["direction_selection"],
            selection_seed=p["selection_seed"],
            freeze_lora_after_launch=p["freeze_lora_after_launch"],
        )
        model = loradash.get_loradash_model(model, config)
        # The launch is this method's `on_optimizer_step` (the loop's step count), as in every committed record: the
        # library's automatic step hook is off, so it only counts steps and can never launch, early or twice.
        loradash.set_auto_launch(model, False)
        return model

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        scalars = [p for n, p in model.named_parameters() if p.requires_grad and _LAMBDA in n]
        ids = {id(p) for p in scalars}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "lr": lr}, {"params": scalars, "lr": lr * self.params["lambda_lr_ratio"]}]

    def check_run(
        self, layers: Sequence[tuple[str, nn.Linear]], *, total_steps: int, micro_batches_per_step: int = 1
    ) -> None:
        """s must fit every target layer (s <= min(out, in)) and the launch must come while training: t < the
        run's optimizer steps (optimizer-step clock) or its training forward calls (forward-call clock)."""
        super().check_run(layers, total_steps=total_steps, micro_batches_per_step=micro_batches_per_step)
        s = self.params["num_directions"]
        if (bad := first_too_narrow(layers, s)) is not None:
            name, layer, k = bad
            raise ValueError(
                f"{self.name}: num_directions (s) = {s} exceeds min(out, in) = {k} of target layer {name!r} "
                f"({layer.out_features} x {layer.in_features})"
            )
        t = self.params["prelaunch_steps"]
        if self.params["prelaunch_clock"] == "forward_call":
            calls = total_steps * micro_batches_per_step
            if t >= calls:
                raise ValueError(f"{self.name}: prelaunch_steps (t) = {t} forward calls, but the run trains on "
                                 f"{calls}: the directions would never train")  # fmt: skip
        elif t >= total_steps:
            raise ValueError(f"{self.name}: prelaunch_steps (t) = {t} must be < the run's {total_steps} optimizer "
                             "steps (the launch would come after training)")  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"launched_at": dict(self._launched_at)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._launched_at = {str(k): int(v) for k, v in state.get("launched_at", {}).items()}

    def on_optimizer_step(self, model: nn.Module, global_step: int) -> None:
        loradash.update_loradash(model, global_step)  # launches every layer once global_step reaches t
        # Record when each layer actually launched (the forward-call clock launches inside a forward pass).
        for name, module, adapter in loradash.dash_layers(model):
            if name not in self._launched_at and module.is_launched(adapter):
                self._launched_at[name] = global_step

    def diagnostics(
        self,
        model: nn.Module,
        *,
        lrs: Sequence[float] | None = None,
        best_step: int | None = None,
        forward: Callable[[], Any] | None = None,
    ) -> dict[str, Any]:
        """The launch summary: t, the optimizer step at which the layers actually launched, how many did, the
        summed learning rate of the scalars over the post-launch steps under the run's schedule (with Adam each
        scalar moves by at most about its rate per step, so |lambda| stays below about that sum), per layer the
        chosen directions, their singular values and max |lambda|, and with `forward` (one fixed batch) the dash
        term's size relative to the layer's output, ||U_s diag(lambda) Vh_s x|| / ||y|| over the batch."""
        layers = loradash.dash_diagnostics(model)
        launch = min(self._launched_at.values()) if self._launched_at else None
        ratio = float(self.params["lambda_lr_ratio"])
        budget: dict[str, Any] = {}
        if lrs is not None and launch is not None:
            # lrs[i] is the rate of step i + 1. The optimizer-step clock launches after step `launch`, so the
            # scalars first move in step launch + 1; the forward-call clock launches inside a forward pass of
            # step `launch` (seen after it), whose update already moves them.
            first = launch - 1 if self.params["prelaunch_clock"] == "forward_call" else launch
            post = list(lrs[max(first, 0) :])
            budget = {
                "lambda_lr_sum_after_launch": ratio * float(sum(post)),
                "post_launch_steps": len(post),
                "best_step_after_launch": None if best_step is None else best_step > launch,
            }
        rows = self._layer_rows(layers)
        fraction = dash_output_fraction(model, forward) if forward is not None else {}
        for name, f in fraction.items():
            rows[name]["dash_output_fraction"] = f
        measured = sorted(f for f in fraction.values() if np.isfinite(f))
        diag = {
            "prelaunch_steps": self.params["prelaunch_steps"],
            "launch_step": launch,
            "launch_step_last_layer": max(self._launched_at.values()) if self._launched_at else None,
            "prelaunch_clock": self.params["prelaunch_clock"],
            "lambda_lr_ratio": ratio,
            "direction_selection": self.params["direction_selection"],
            "freeze_lora_after_launch": self.params["freeze_lora_after_launch"],
            **budget,
            "dash_output_fraction_median": float(np.median(measured)) if measured else None,
            "launched_layers": sum(d["launched"] for d in layers.values()),
            "num_layers": len(layers),
            "layers": rows,
        }
        diag["summary"], diag["note"] = self.summarize_diagnostics(diag)
        return diag

    @classmethod
    def summarize_diagnostics(cls, diagnostics: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """From the record's fields, so that records written before a summary changed read the same way."""
        d = diagnostics
        lam = [row["max_abs_lambda"] for row in (d.get("layers") or {}).values()]
        sig = sorted(x for row in (d.get("layers") or {}).values() if row["launched"] for x in row["sigma"])
        summed = d.get("lambda_lr_sum_after_launch")
        summary = {  # what the tables show for this method (averaged over seeds)
            "summed lambda lr after launch": summed,
            "dash term / layer output (median layer)": d.get("dash_output_fraction_median"),
            "max |lambda|": max(lam, default=None),
            "median sigma of the chosen directions": sig[len(sig) // 2] if sig else None,
            "launch step": d.get("launch_step"),
        }
        note = None
        if summed is not None:
            note = (f"the scalars' learning rate summed over the post-launch steps (under the schedule) was {summed:.2g}: "
                    "with Adam each scalar moves by about its learning rate per step at most, so |lambda| stays "
                    f"below about {summed:.2g}")  # fmt: skip
        return summary, note

    @classmethod
    def manipulation_measures(cls, diagnostics: Mapping[str, Any]) -> dict[str, float | None]:
        return {
            "summed lambda lr after launch": diagnostics.get("lambda_lr_sum_after_launch"),
            "dash term / layer output (median layer)": diagnostics.get("dash_output_fraction_median"),
        }

    @staticmethod
    def _layer_rows(layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {
            name.removeprefix(_PREFIX): {
                "launched": d["launched"],
                "indices": d["indices"],
                "sigma": d["sigma"],
                "lambda": d["lambda"],
                "max_abs_lambda": max((abs(x) for x in d["lambda"]), default=0.0),
            }
            for name, d in layers.items()
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


@torch.no_grad()
def dash_output_fraction(model: nn.Module, forward: Callable[[], Any]) -> dict[str, float]:
    """Per launched LoRA-Dash layer, ||U_s diag(lambda) Vh_s x|| / ||y|| (Frobenius norms over every position
    of the batch that `forward` runs; y is the layer's whole output), measured in eval mode (no dropout)."""
    sums: dict[str, list[float]] = {}
    hooks = []
    for name, module, adapter in loradash.dash_layers(model):
        if not module.is_launched(adapter):
            continue

        def hook(
            mod: nn.Module, args: Any, out: torch.Tensor, name: str = name, adapter: str = adapter
        ) -> None:
            lam = mod.lora_dash_lambda[adapter].weight.float()
            x = args[0].float()
            dash = F.linear(
                F.linear(x, mod.lora_dash_Vh[adapter].float()) * lam, mod.lora_dash_U[adapter].float()
            )
            acc = sums.setdefault(name.removeprefix(_PREFIX), [0.0, 0.0])
            acc[0] += float(dash.pow(2).sum())
            acc[1] += float(out.float().pow(2).sum())

        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: float(np.sqrt(num / den)) if den > 0 else float("nan") for name, (num, den) in sums.items()}
