"""LoRA-Dash as a peft LoRA variant.

Why a variant on peft's own `lora.Linear` (rather than a separate layer class): the LoRA branch then is
*exactly* peft's LoRA (same init, same dropout, same scaling, same merge code), so the LoRA baseline and
LoRA-Dash differ only by the dash term, and everything peft does around LoRA layers (adapter switching,
saving, `merge_and_unload`, device/dtype placement) keeps working. peft selects a variant through the
`lora_variants` property of the layer class; peft's built-in `lora.Linear` does not know ours, so
`DashLinear` extends the mapping and is registered for `nn.Linear` through the config's custom-module hook.

State per adapter (all allocated when the model is wrapped, never replaced afterwards):
- `lora_dash_lambda[adapter].weight`  [s]       trainable scalars lambda_i, initialised to 0
- `lora_dash_U[adapter]`              [out, s]  frozen left singular vectors of the chosen directions
- `lora_dash_Vh[adapter]`             [s, in]   frozen right singular vectors (transposed)
- `lora_dash_indices[adapter]`        [s]       indices of the chosen directions in W's SVD
- `lora_dash_sigma[adapter]`          [s]       their singular values (diagnostics: |lambda| vs sigma)
- `lora_dash_launched[adapter]`       []        0 before the launch, 1 after
- `lora_dash_forward_calls[adapter]`  []        forward calls that ran the unmerged adapter ("forward_call" clock)
Before the launch U and Vh are zero, so the dash term is exactly zero and so is lambda's gradient.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.lora import layer as lora_layer
from peft.tuners.lora.layer import LoraVariant
from torch import nn

from .distributed import is_distributed, share_from_rank0, whole_layer_tensors
from .selection import LowRankUpdate, select_task_specific_directions
from .svd_cache import SVDCache, weight_key

__all__ = [
    "DashLinear",
    "DashScalars",
    "LoraDashVariant",
    "launch_layer",
    "LAYER_MAPPING",
    "UnsupportedTarget",
]

DASH_TRAINABLE = ("lora_dash_lambda",)
DASH_STATE = (
    "lora_dash_U",
    "lora_dash_Vh",
    "lora_dash_indices",
    "lora_dash_sigma",
    "lora_dash_launched",
    "lora_dash_forward_calls",
)
DASH_SETTINGS = (
    "dash_prelaunch_steps",
    "dash_eps",
    "dash_clock",
    "dash_svd_cache",
    "dash_selection",
    "dash_selection_seed",
    "dash_freeze_lora",
)
# Runtime state of the optimizer-step clock (`loradash.clock`): optimizer steps seen, whether `update_loradash`
# has taken over the launch (then the step hook only counts), whether the clock is done with the adapter.
DASH_CLOCK = ("dash_optimizer_steps", "dash_manual", "dash_clock_done")


class DashScalars(nn.Module):
    """The s trainable scalars lambda of one adapted matrix (a module with `.weight`, like DoRA's magnitude,
    so FSDP wrap policies and optimizers treat it like any other adapter weight)."""

    def __init__(
        self, num_directions: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_directions, device=device, dtype=dtype))


class LoraDashVariant(LoraVariant):
    """peft LoRA-variant hooks for LoRA-Dash: y = W x + (alpha/r) B A x' + U_s diag(lambda) Vh_s x'
    with x' = dropout(x) (the authors apply LoRA's dropout to the dash input, and do not scale it)."""

    def supports_lora_conversion(self) -> bool:
        # get_delta_weight is not variant-dispatched in peft; conversion goes through loradash.export_as_lora.
        return False

    @staticmethod
    def init(module: DashLinear, adapter_name: str, **kwargs: Any) -> None:  # type: ignore[override]
        config = kwargs["config"]
        s = int(config.num_directions)
        lora_A = module.lora_A[adapter_name].weight
        out_f, in_f = module.out_features, module.in_features
        if s > min(out_f, in_f):
            raise ValueError(
                f"num_directions={s} exceeds min(out, in) = {min(out_f, in_f)} of the target layer "
                f"{kwargs.get('target_name') or type(module.get_base_layer()).__name__} ({out_f} x {in_f})"
            )
        dev, dt = lora_A.device, lora_A.dtype
        module.lora_dash_lambda[adapter_name] = DashScalars(s, device=dev, dtype=dt)
        module.lora_dash_U[adapter_name] = torch.zeros(out_f, s, device=dev, dtype=dt)
        module.lora_dash_Vh[adapter_name] = torch.zeros(s, in_f, device=dev, dtype=dt)
        module.lora_dash_indices[adapter_name] = torch.full((s,), -1, device=dev, dtype=torch.long)
        module.lora_dash_sigma[adapter_name] = torch.zeros(s, device=dev, dtype=torch.float32)
        module.lora_dash_launched[adapter_name] = torch.zeros((), device=dev, dtype=torch.long)
        module.lora_dash_forward_calls[adapter_name] = torch.zeros((), device=dev, dtype=torch.long)
        module.dash_prelaunch_steps[adapter_name] = int(config.prelaunch_steps)
        module.dash_eps[adapter_name] = float(config.change_rate_eps)
        module.dash_clock[adapter_name] = config.prelaunch_clock
        module.dash_selection[adapter_name] = getattr(config, "direction_selection", "change_rate")
        module.dash_selection_seed[adapter_name] = int(getattr(config, "selection_seed", 0))
        module.dash_freeze_lora[adapter_name] = bool(getattr(config, "freeze_lora_after_launch", False))
        cache_dir = getattr(config, "svd_cache_dir", None)
        module.dash_svd_cache[adapter_name] = (
            SVDCache(cache_dir, model_id=config.base_model_name_or_path) if cache_dir else None
        )
        module.dash_optimizer_steps[adapter_name] = 0
        module.dash_manual[adapter_name] = False
        module.dash_clock_done[adapter_name] = False
        from .clock import track

        track(module)

    @staticmethod
    def delta_weight(module: DashLinear, adapter: str) -> torch.Tensor:
        """The full update (alpha/r) B A + U_s diag(lambda) Vh_s, [out, in], in the adapter's dtype (fp32 on CPU
        for half-precision adapters, as peft's get_delta_weight)."""
        lora_delta = module.get_delta_weight(adapter)
        U = module.lora_dash_U[adapter]
        lam = module.lora_dash_lambda[adapter].weight
        Vh = module.lora_dash_Vh[adapter]
        dash = (U.float() * lam.float()) @ Vh.float()  # [out, s] x [s, in]
        return lora_delta + dash.to(lora_delta.dtype)

    @staticmethod
    def merge_safe(module: DashLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        delta = LoraDashVariant.delta_weight(module, active_adapter)
        return (orig_weight + delta.to(orig_weight.dtype)).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: DashLinear, active_adapter: str, orig_weight: torch.Tensor) -> None:
        delta = LoraDashVariant.delta_weight(module, active_adapter)
        orig_weight.data += delta.to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: DashLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        delta = LoraDashVariant.delta_weight(module, active_adapter)
        return orig_weight.data - delta.to(orig_weight.dtype)

    @staticmethod
    def forward(
        module: DashLinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        a = active_adapter
        A = module.lora_A[a].weight  # [r, in]
        lora_B = module.lora_B[a]  # weight [out, r]
        B_w, B_b = lora_B.weight, lora_B.bias
        if module.dash_freeze_lora[a] and module.is_launched(a):
            # dash-only: after the launch A and B stay in the update but get no gradient (None, so optimizers
            # skip them); read the flag only for this variant, to keep the paper's forward free of host syncs.
            A, B_w = A.detach(), B_w.detach()
            B_b = None if B_b is None else B_b.detach()
        lam = module.lora_dash_lambda[a].weight  # [s]
        x = module.lora_dropout[a](x)  # one dropout mask shared by both branches
        # LoRA and dash folded into one rank r + s update, never an out x in matrix:
        #   (alpha/r) B A x + U diag(lambda) Vh x = [B, U] (diag([alpha/r]*r ++ lambda) ([A; Vh] x)).
        # Scaling the skinny [..., r+s] activations instead of the [..., out] output makes this as cheap as
        # peft's own LoRA forward (see `make bench`).
        scale = torch.cat([lam.new_full((A.shape[0],), module.scaling[a]), lam]).to(x.dtype)  # [r+s]
        down = torch.cat([A, module.lora_dash_Vh[a].to(A.dtype)])  # [r+s, in]
        up = torch.cat([B_w, module.lora_dash_U[a].to(A.dtype)], dim=1)  # [out, r+s]
        bias = None if B_b is None else B_b * module.scaling[a]
        return result + F.linear(F.linear(x, down) * scale, up, bias)  # [..., out]


class DashLinear(lora_layer.Linear):
    """peft `lora.Linear` that also knows the LoRA-Dash variant (selected by `LoraDashConfig.use_loradash`)."""

    # Attribute types for the type checker (nn.Module.__getattr__ is typed as Tensor | Module).
    lora_A: nn.ModuleDict
    lora_B: nn.ModuleDict
    lora_dropout: nn.ModuleDict
    lora_dash_lambda: nn.ModuleDict
    lora_dash_U: BufferDict
    lora_dash_Vh: BufferDict
    lora_dash_indices: BufferDict
    lora_dash_sigma: BufferDict
    lora_dash_launched: BufferDict
    lora_dash_forward_calls: BufferDict
    scaling: dict[str, float]
    dash_prelaunch_steps: dict[str, int]
    dash_eps: dict[str, float]
    dash_clock: dict[str, str]
    dash_svd_cache: dict[str, SVDCache | None]
    dash_optimizer_steps: dict[str, int]
    dash_manual: dict[str, bool]
    dash_clock_done: dict[str, bool]

    adapter_layer_names = lora_layer.Linear.adapter_layer_names + DASH_TRAINABLE
    other_param_names = lora_layer.Linear.other_param_names + DASH_STATE + DASH_SETTINGS + DASH_CLOCK

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, **kwargs: Any) -> None:
        weight = getattr(base_layer, "weight", None)
        if weight is not None and weight.dtype not in (
            torch.float32,
            torch.float16,
            torch.bfloat16,
            torch.float64,
        ):
            raise TypeError(
                f"LoRA-Dash needs a floating-point base weight for its SVD; got {weight.dtype} "
                f"({type(base_layer).__name__}). Quantized base layers are not supported."
            )
        if type(base_layer).__module__.startswith("bitsandbytes"):
            raise TypeError(f"LoRA-Dash does not support quantized layers ({type(base_layer).__name__}).")
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: Any, **kwargs: Any) -> None:
        # The per-adapter containers must exist before peft's update_layer runs the variant's init.
        if "lora_dash_lambda" not in self._modules:
            self.lora_dash_lambda = nn.ModuleDict()
            for name in DASH_STATE:
                setattr(self, name, BufferDict(persistent=True))
            for name in DASH_SETTINGS + DASH_CLOCK:
                setattr(self, name, {})
            self._dash_hook: Any = None
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)
        if getattr(config, "prelaunch_clock", None) == "forward_call" and self._dash_hook is None:
            self._dash_hook = self.register_forward_pre_hook(_forward_call_clock)

    @property
    def lora_variants(self) -> dict[tuple[str, ...], Any]:
        return {(): None, ("use_loradash",): LoraDashVariant}

    def is_launched(self, adapter: str) -> bool:
        return bool(self.lora_dash_launched[adapter].item())


class UnsupportedTarget(nn.Module):
    """Stands for every target that is not an nn.Linear in `LAYER_MAPPING`: building it refuses the target by name
    (peft would otherwise fail later with a variant-combination error that names no layer)."""

    def __init__(self, target: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        base = target.get_base_layer() if hasattr(target, "get_base_layer") else target
        raise TypeError(
            f"LoRA-Dash supports nn.Linear targets only; {kwargs.get('target_name') or '?'!r} is a "
            f"{type(base).__name__} (Conv1D / fan_in_fan_out, embeddings and convolutions are not supported)"
        )


# What `LoraDashConfig` registers with peft's custom-module hook (`LoraConfig._register_custom_module`): peft tries
# the entries in order (first isinstance match wins), so nn.Linear targets get a DashLinear and the rest are refused.
LAYER_MAPPING: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: DashLinear, nn.Module: UnsupportedTarget}


@torch.no_grad()
def launch_layer(module: DashLinear, adapter: str) -> None:
    """Select the task-specific directions of one layer from its current LoRA update and fill U, Vh in place.

    Paper Sec. 4, "pre-launch" -> "dash": dW = (alpha/r) B A after t updates; keep the top-s change rates.
    With `LoraDashConfig.svd_cache_dir` set, W's SVD comes from (or goes to) that `SVDCache`. On sharded models
    W, B and A are gathered whole first (ZeRO-3 and FSDP2 here; FSDP1 by the unit around the layer, which
    `launch_loradash` / `update_loradash` open; `loradash.distributed`), and with several processes rank 0's
    choice is stored on every rank.
    """
    if module.merged:
        raise RuntimeError("Cannot launch LoRA-Dash on a merged layer: unmerge first.")
    U_buf, Vh_buf = module.lora_dash_U[adapter], module.lora_dash_Vh[adapter]  # [out, s], [s, in]
    idx_buf, sigma_buf = module.lora_dash_indices[adapter], module.lora_dash_sigma[adapter]  # [s], [s]
    cache = module.dash_svd_cache.get(adapter)
    if cache is not None and is_distributed() and torch.distributed.get_rank() != 0:
        cache = dataclasses.replace(cache, write=False)  # one writer per entry
    with whole_layer_tensors(module, adapter) as (weight, B, A):  # [out, in], [out, r], [r, in]
        update = LowRankUpdate(B=B, A=A, scaling=module.scaling[adapter])
        svd = None if cache is None else cache.svd(weight)
        rule = module.dash_selection[adapter]
        generator = None
        if rule == "random":
            # one draw per matrix: the seed and the weight's hash (the layer does not know its name)
            digest = hashlib.sha256(f"{module.dash_selection_seed[adapter]}|{weight_key(weight)}".encode())
            generator = torch.Generator().manual_seed(int(digest.hexdigest()[:15], 16))
        tsd = select_task_specific_directions(
            weight,
            update,
            U_buf.shape[1],
            eps=module.dash_eps[adapter],
            svd=svd,
            rule=rule,
            generator=generator,
        )
        U_buf.copy_(tsd.U)
        Vh_buf.copy_(tsd.Vh)
        idx_buf.copy_(tsd.indices)
        sigma_buf.copy_(tsd.singular_values[tsd.indices])
    # SVD signs and tie order can differ between ranks: every rank keeps rank 0's choice, bit for bit.
    share_from_rank0(U_buf, Vh_buf, idx_buf, sigma_buf)
    module.lora_dash_launched[adapter].fill_(1)


def _forward_call_clock(module: DashLinear, args: Any) -> None:
    """Forward pre-hook of the "forward_call" clock, reproducing the authors' code: every forward call that runs
    the adapter (training, evaluation, accumulation micro-batches, checkpoint recomputation) advances a counter,
    and the launch happens at the start of call t + 1. Only installed when a config asks for this clock.

    A merged layer, or one with its adapters disabled, computes the base layer alone (peft's `Linear.forward`):
    such a call is not a call of the adapter and does not count, as in the authors' code, whose counter sits in
    the branch that applies the unmerged adapter. (It would otherwise also launch inside a merged forward.)"""
    if module.merged or module.disable_adapters:
        return
    for adapter in module.active_adapters:
        if adapter not in module.lora_dash_forward_calls or module.dash_clock.get(adapter) != "forward_call":
            continue
        calls = module.lora_dash_forward_calls[adapter]
        if not module.is_launched(adapter) and int(calls.item()) >= module.dash_prelaunch_steps[adapter]:
            launch_layer(module, adapter)
        calls.add_(1)
