"""The LoRA-Dash launch on sharded models: gather each layer's weights whole, share rank 0's choice.

The launch needs, for every targeted layer, the base weight W [out, in] and the LoRA factors B [out, r] and
A [r, in] whole (one SVD of W each). Under the sharding engines a rank holds a slice of them, and each engine
gathers with its own API (imported lazily: none of them is a dependency of the library):

- DeepSpeed ZeRO-3: a partitioned parameter carries `ds_id` and is an empty tensor outside
  `deepspeed.zero.GatheredParameters` (or DeepSpeed's own fetch in a forward pass). It is recognised by that
  attribute, not by transformers' `is_deepspeed_zero3_enabled()` (which peft's `gather_params_ctx` asks, and
  which is False under accelerate's ZeRO-3 config with `zero3_init_flag: false`); `deepspeed` is imported only
  when such a parameter has to be gathered.
- FSDP2 (`fully_shard`): between forward passes the parameters are DTensors; `full_tensor()` gathers one.
- FSDP1 (`FullyShardedDataParallel`): parameters live in the flat parameter of the FSDP unit that wraps them,
  and only that unit can gather them (`summon_full_params`). A layer cannot see the unit around it, so the
  model-level launch (`launch_loradash`, `update_loradash`) opens each enclosing unit (`launch_in_fsdp1_units`);
  the forward-call clock launches inside the unit's forward pass, where its parameters are whole. The layer's
  LoRA and dash weights must share its unit (use_orig_params=True and a block-level wrap policy): a policy that
  wraps lora_A / lora_B / the scalars on their own (peft's `fsdp_auto_wrap_policy`) leaves them sharded in the
  fused forward, which reads them directly (LoraDashVariant.forward), and is not supported.

Every gather is a collective: all ranks launch the same layers in the same order (the model-level calls walk
the modules in one order; the forward-call clock launches in the same forward pass on every rank). The choice
is then broadcast from rank 0, so the stored U_s, Vh_s, indices and singular values are bitwise equal on all
ranks even where SVD signs or tie order differ between them (PEFT-NOTES: peft's EVA does the same).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .layer import DashLinear

__all__ = ["is_distributed", "whole_layer_tensors", "share_from_rank0", "launch_in_fsdp1_units"]


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _fsdp1_class() -> type[nn.Module] | None:
    """FSDP1's wrapper class, or None outside a process group (there is no FSDP without one)."""
    if not is_distributed():
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel


def _layer_tensors(module: DashLinear, adapter: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    W, B, A = module.get_base_layer().weight, module.lora_B[adapter].weight, module.lora_A[adapter].weight
    assert isinstance(W, torch.Tensor) and isinstance(B, torch.Tensor) and isinstance(A, torch.Tensor)
    return W, B, A


def _whole(t: torch.Tensor) -> torch.Tensor:
    # FSDP2 / DTensor: all-gather the shards (duck-typed: no DTensor import for unsharded models)
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _check_whole(module: DashLinear, adapter: str, tensors: Sequence[torch.Tensor]) -> None:
    """Refuse to decompose a slice: a sharded tensor that no engine above gathered has the wrong shape (ZeRO-3:
    empty; FSDP1 with use_orig_params: a flat 1-D shard) or no storage (FSDP1 without it: a freed view)."""
    out_f, in_f, r = module.out_features, module.in_features, module.r[adapter]
    expected = ((out_f, in_f), (out_f, r), (r, in_f))
    for name, t, shape in zip(("base weight", "lora_B", "lora_A"), tensors, expected, strict=True):
        freed = t.device.type != "meta" and t.numel() > 0 and t.untyped_storage().nbytes() == 0
        if tuple(t.shape) != shape or freed:
            raise RuntimeError(
                f"LoRA-Dash launch: the {name} of a {out_f} x {in_f} layer is not whole on this rank "
                f"(shape {tuple(t.shape)}{', storage freed' if freed else ''}, expected {shape}): it is sharded "
                "by an engine the layer cannot gather itself. Under FSDP1 launch through "
                "loradash.launch_loradash / update_loradash on the model that holds the FSDP units, and keep each "
                "layer's LoRA weights in its unit (use_orig_params=True, a block-level wrap policy)."
            )


@contextlib.contextmanager
def whole_layer_tensors(
    module: DashLinear, adapter: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(W [out, in], B [out, r], A [r, in]) of one layer, whole on this rank while the context is open.

    Gathers what the layer itself can: ZeRO-3 partitioned parameters (read-only: `modifier_rank=None`) and FSDP2
    DTensors. FSDP1 parameters must already be whole: inside a forward pass of their unit, or in
    `launch_in_fsdp1_units`.
    """
    with contextlib.ExitStack() as stack:
        zero3: list[Any] = [p for p in _layer_tensors(module, adapter) if hasattr(p, "ds_id")]
        if any(p.ds_status.name == "INFLIGHT" for p in zero3):
            raise RuntimeError(
                "LoRA-Dash launch under ZeRO-3: a weight of the layer is being fetched by DeepSpeed's prefetcher"
            )
        # Gather only what is partitioned now: a parameter DeepSpeed holds gathered (a persistent small one, or
        # one it fetched for the running forward pass) is whole already, and is DeepSpeed's to release.
        missing = [p for p in zero3 if p.ds_status.name == "NOT_AVAILABLE"]
        if missing:
            import deepspeed  # only a ZeRO-3 model gets here, and DeepSpeed made its parameters

            stack.enter_context(deepspeed.zero.GatheredParameters(missing, modifier_rank=None))
        tensors = tuple(_whole(t) for t in _layer_tensors(module, adapter))
        _check_whole(module, adapter, tensors)
        yield tensors  # type: ignore[misc]


def _require_initialised(units: Sequence[nn.Module]) -> None:
    # FSDP1 marks its units (`_is_root`) when the root is first used; a unit summoned before that would take
    # itself for a root and break the root's first forward pass.
    if any(getattr(u, "_is_root", None) is None for u in units):
        raise RuntimeError(
            "LoRA-Dash launch under FSDP1 before the first forward pass: pass the FSDP-wrapped root model (not a "
            "module inside it) to launch_loradash / update_loradash, or launch after a forward pass."
        )


def share_from_rank0(*tensors: torch.Tensor) -> None:
    """Overwrite `tensors` in place with rank 0's (no-op in one process): the directions are chosen once."""
    if is_distributed():
        for t in tensors:
            torch.distributed.broadcast(t, src=0)


def launch_in_fsdp1_units(
    model: nn.Module, layers: Sequence[tuple[str, Any, str]], launch: Callable[[Any, str], None]
) -> None:
    """Call `launch(layer, adapter)` for `layers` ((name, layer, adapter) of `dash_layers(model)`, in order), with
    the parameters of each layer's enclosing FSDP1 unit gathered (without FSDP1: just the calls).

    A unit is summoned once for its run of consecutive layers and without recursion (it holds its layers'
    weights; a unit nested in it is summoned when its own layers come). Summoning a nested unit before the
    root's first forward would make it a root and break that forward: an uninitialised model is initialised
    through its root when `model` is the root (the FSDP-wrapped model), and refused otherwise.
    """
    fsdp1 = _fsdp1_class()
    units = [] if fsdp1 is None else [(n, m) for n, m in model.named_modules() if isinstance(m, fsdp1)]
    if not units:
        for _, layer, adapter in layers:
            launch(layer, adapter)
        return
    assert fsdp1 is not None
    summon = fsdp1.summon_full_params  # type: ignore[attr-defined]
    if units[0][0] == "" and getattr(model, "_is_root", None) is None:  # `model` is the root, never used yet
        with summon(model, recurse=False, writeback=False):  # its lazy initialisation, as a first forward's
            pass
    _require_initialised([u for _, u in units])

    def enclosing(name: str) -> nn.Module | None:
        owners = [(n, u) for n, u in units if n == "" or name.startswith(n + ".")]
        return max(owners, key=lambda o: len(o[0]))[1] if owners else None

    runs: list[tuple[nn.Module | None, list[tuple[Any, str]]]] = []
    for name, layer, adapter in layers:
        unit = enclosing(name)
        if not runs or runs[-1][0] is not unit:
            runs.append((unit, []))
        runs[-1][1].append((layer, adapter))
    for unit, run in runs:
        with summon(unit, recurse=False, writeback=False) if unit is not None else contextlib.nullcontext():
            for layer, adapter in run:
                launch(layer, adapter)
