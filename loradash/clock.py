"""The optimizer-step clock without a call: one global `torch.optim` post-step hook.

torch runs the hooks of `torch.optim.optimizer.register_optimizer_step_post_hook` after every `optimizer.step()`
that ran (a step skipped by a GradScaler on inf/NaN gradients, or by accelerate on an accumulation micro-batch,
runs no hook: it is not an update). loradash registers one hook when its first layer is built. For an optimizer
that holds the `lora_A` weight of a LoRA-Dash adapter on the "optimizer_step" clock, it counts the updates of that
adapter and then:

- automatic mode (the default, until `update_loradash` reaches the model): launches the adapter once its count
  reaches t (`prelaunch_steps`), so a plain loop or a `transformers.Trainer` / TRL `SFTTrainer` without
  `LoraDashCallback` launches after exactly t updates, inside the step that makes the t-th one;
- manual mode (`update_loradash(model, global_step)` was called, or `set_auto_launch(model, False)`: the harness,
  `LoraDashCallback`, any loop that drives the clock itself): only counts, and warns once, at update t + 1, if the
  adapter is still not launched (the call was forgotten after the first step, or given another count).

The count starts from the optimizer's own per-parameter step count where it keeps one (Adam, AdamW, ...: restored
with the optimizer state, so a resumed run keeps its clock). The hook sees the parameters an optimizer holds, so
engines that flatten them into their own buffers (FSDP1 flat parameters, DeepSpeed ZeRO) are invisible to it:
there, call `update_loradash` after every step (as under FSDP1 it must be called with the FSDP root anyway).
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = ["LoraDashWarning", "track", "set_manual"]


class LoraDashWarning(UserWarning):
    """A LoRA-Dash adapter is being trained, saved or exported in a state that is most likely a mistake."""


_serials = itertools.count()
# Every LoRA-Dash layer alive, with the order in which it was built (the same on every rank, so that launches that
# broadcast from rank 0 happen in the same order everywhere).
_layers: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
# optimizer -> (its parameter count when looked at, the (serial, layer ref, adapter) it trains on the step clock)
_trained_by: weakref.WeakKeyDictionary[Any, tuple[int, list[tuple[int, Any, str]]]] = (
    weakref.WeakKeyDictionary()
)
_handle: Any = None


def track(layer: Any) -> None:
    """Called by the variant's init: make `layer` visible to the step hook (and install the hook once)."""
    global _handle
    if layer not in _layers:
        _layers[layer] = next(_serials)
    _trained_by.clear()  # a new layer may belong to an optimizer already looked at
    if _handle is None:
        _handle = register_optimizer_step_post_hook(_on_optimizer_step)


def set_manual(layers: Any, manual: bool = True) -> None:
    """Put (layer, adapter) pairs under explicit control (the hook only counts) or back to automatic."""
    for layer, adapter in layers:
        layer.dash_manual[adapter] = manual


def _num_params(optimizer: torch.optim.Optimizer) -> int:
    return sum(len(group["params"]) for group in optimizer.param_groups)


def _adapters_of(optimizer: torch.optim.Optimizer) -> list[tuple[int, Any, str]]:
    """The (serial, layer ref, adapter) on the "optimizer_step" clock whose lora_A `optimizer` holds, built once per
    optimizer (again if its parameter count changes, e.g. `add_param_group`)."""
    n = _num_params(optimizer)
    cached = _trained_by.get(optimizer)
    if cached is not None and cached[0] == n:
        return cached[1]
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    found = []
    for layer, serial in list(_layers.items()):
        for adapter, clock in layer.dash_clock.items():
            weight = layer.lora_A[adapter].weight
            if clock != "optimizer_step" or id(weight) not in held:
                continue
            # Resume: continue from the optimizer's own count of the updates of this weight, where it keeps one.
            step = optimizer.state.get(weight, {}).get("step")
            if step is not None:
                layer.dash_optimizer_steps[adapter] = max(
                    0, int(step) - 1
                )  # this step's update is counted below
            found.append((serial, weakref.ref(layer), adapter))
    found.sort(key=lambda entry: entry[0])
    _trained_by[optimizer] = (n, found)
    return found


def _on_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    entries = _adapters_of(optimizer)
    due, late = [], []
    for _, ref, adapter in entries:
        layer = ref()
        if layer is None or adapter not in layer.dash_optimizer_steps:
            continue
        steps = layer.dash_optimizer_steps[adapter] = layer.dash_optimizer_steps[adapter] + 1
        t = layer.dash_prelaunch_steps[adapter]
        if layer.dash_clock_done[adapter] or steps < t:
            continue
        if not layer.dash_manual[adapter]:
            due.append((layer, adapter))
        elif steps > t:  # one step after the caller's update_loradash(model, t) should have launched it
            late.append((layer, adapter))
    if due or late:
        # One host sync for every flag looked at.
        launched = torch.stack([m.lora_dash_launched[a] for m, a in due + late]).tolist()
    else:
        launched = []
    from .layer import launch_layer

    for (layer, adapter), done in zip(due, launched[: len(due)], strict=True):
        if not done:
            launch_layer(layer, adapter)
        layer.dash_clock_done[adapter] = True
    pending = [(m, a) for (m, a), done in zip(late, launched[len(due) :], strict=True) if not done]
    for layer, adapter in late:
        layer.dash_clock_done[adapter] = True  # warn once; a launch from now on is the caller's
    if pending:
        layer, adapter = pending[0]
        warnings.warn(
            f"LoRA-Dash: {len(pending)} adapted layer(s) trained {layer.dash_optimizer_steps[adapter]} optimizer "
            f"steps, past prelaunch_steps (t) = {layer.dash_prelaunch_steps[adapter]}, without a launch: "
            "update_loradash(model, global_step) took over the launch but is not being called after every "
            "optimizer step with the number of steps done (so far this is plain LoRA); call it after every step, "
            "or loradash.launch_loradash(model) to launch now",
            LoraDashWarning,
            stacklevel=2,
        )
