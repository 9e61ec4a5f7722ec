"""Wrapping, the launch clock and loading of LoRA-Dash models (export: `loradash.export`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from torch import nn

from .clock import set_manual
from .config import LoraDashConfig
from .distributed import launch_in_fsdp1_units
from .layer import DashLinear, launch_layer

__all__ = [
    "get_loradash_model",
    "update_loradash",
    "launch_loradash",
    "set_auto_launch",
    "from_pretrained",
    "dash_layers",
    "dash_diagnostics",
]


def get_loradash_model(
    model: nn.Module, config: LoraDashConfig, adapter_name: str = "default", **kwargs: Any
) -> Any:
    """Wrap `model` with a LoRA-Dash adapter and return the `peft.PeftModel`: the same as
    `peft.get_peft_model(model, config)` (a `LoraDashConfig` makes peft build LoRA-Dash layers by itself), with the
    config's type checked first.

    All LoRA-Dash tensors are allocated here; nothing is added later, so an optimizer built now sees the final
    parameter set. The launch then happens by itself after t optimizer steps of any torch optimizer that trains the
    model (`loradash.clock`); `update_loradash(model, global_step)` after every optimizer step (or
    `LoraDashCallback` with `transformers.Trainer`) drives it explicitly instead.
    """
    if not isinstance(config, LoraDashConfig):
        raise TypeError(f"config must be a LoraDashConfig, got {type(config).__name__}")
    return get_peft_model(model, config, adapter_name=adapter_name, **kwargs)


def dash_layers(model: nn.Module, adapter_name: str | None = None) -> Iterator[tuple[str, DashLinear, str]]:
    """Yield (module name, layer, adapter) for every LoRA-Dash layer (and adapter) in `model`."""
    for name, module in model.named_modules():
        if isinstance(module, DashLinear):
            for adapter in module.lora_dash_launched:
                if adapter_name is None or adapter == adapter_name:
                    yield name, module, adapter


def launch_loradash(model: nn.Module, adapter_name: str | None = None) -> int:
    """Launch every not-yet-launched LoRA-Dash layer now, whatever the clock says. Returns how many launched.

    With several processes every rank must call it (as `update_loradash`): the sharded weights are gathered
    whole (DeepSpeed ZeRO-3, FSDP2, FSDP1; see `loradash.distributed`) and rank 0's choice is kept everywhere.
    Under FSDP1 pass the model holding the FSDP units (the FSDP-wrapped root before its first forward pass).
    """
    due = [(name, m, a) for name, m, a in dash_layers(model, adapter_name) if not m.is_launched(a)]
    launch_in_fsdp1_units(model, due, launch_layer)
    return len(due)


def update_loradash(model: nn.Module, global_step: int) -> int:
    """Advance LoRA-Dash's optimizer-step clock: call after every optimizer step with the number of optimizer
    steps done so far (`global_step`). Launches every layer whose t (prelaunch_steps) has been reached and is
    not launched yet; later calls are no-ops. Layers on the "forward_call" clock launch themselves and are
    ignored here. Returns the number of layers launched by this call.

    The first call takes the launch over from the automatic step hook (`loradash.clock`), which from then on
    only counts the steps and warns if the launch is still missing one step after t. Calling it before the first
    optimizer step (as `LoraDashCallback` does) makes t = 0 launch before any update.
    """
    layers = [(name, m, a) for name, m, a in dash_layers(model) if m.dash_clock[a] == "optimizer_step"]
    set_manual((m, a) for _, m, a in layers)
    due = [(name, m, a) for name, m, a in layers if global_step >= m.dash_prelaunch_steps[a]]
    if not due:
        return 0
    # One host sync for all flags instead of one per layer.
    launched = torch.stack([m.lora_dash_launched[a] for _, m, a in due]).tolist()
    due = [layer for layer, done in zip(due, launched, strict=True) if not done]
    launch_in_fsdp1_units(model, due, launch_layer)
    return len(due)


def set_auto_launch(model: nn.Module, enabled: bool) -> None:
    """Switch the automatic launch of the step hook (`loradash.clock`) on or off for every LoRA-Dash layer of
    `model`. Off, the launch is the caller's (`update_loradash`, `launch_loradash`); the hook still counts the
    optimizer steps and warns once when a layer passes t steps unlaunched. `update_loradash` switches it off."""
    set_manual(((m, a) for _, m, a in dash_layers(model)), manual=not enabled)


def dash_diagnostics(model: nn.Module, adapter_name: str = "default") -> dict[str, dict[str, Any]]:
    """Per layer: launched flag, chosen indices, their singular values, lambda, and forward calls counted."""
    out: dict[str, dict[str, Any]] = {}
    for name, module, _ in dash_layers(model, adapter_name):
        out[name] = {
            "launched": module.is_launched(adapter_name),
            "indices": module.lora_dash_indices[adapter_name].tolist(),
            "sigma": [float(x) for x in module.lora_dash_sigma[adapter_name].tolist()],
            "lambda": [
                float(x) for x in module.lora_dash_lambda[adapter_name].weight.detach().float().tolist()
            ],
            "forward_calls": int(module.lora_dash_forward_calls[adapter_name].item()),
        }
    return out


def from_pretrained(
    base_model: nn.Module,
    directory: str | os.PathLike[str],
    adapter_name: str = "default",
    is_trainable: bool = False,
    *,
    svd_cache_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Any:
    """Load a LoRA-Dash adapter folder written by `model.save_pretrained` onto `base_model`.

    Restores LoRA A/B, the scalars, U_s, Vh_s, the chosen indices, the launch flag and the forward-call count,
    so a checkpoint saved before the launch resumes in the pre-launch phase. `directory` is a local folder; its
    weights are read from `adapter_model.safetensors` only (a pickled `adapter_model.bin` is refused, never
    unpickled). Raises if any LoRA-Dash tensor is missing from the folder. `svd_cache_dir` sets
    `LoraDashConfig.svd_cache_dir` (a runtime setting, not saved) for a launch still to come.
    """
    directory = os.fspath(directory)
    if kwargs.get("subfolder"):  # peft's hub-style argument: read config and weights from the same folder
        directory = os.path.join(directory, kwargs.pop("subfolder"))
    try:
        config = LoraDashConfig.load(directory)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{os.path.join(directory, 'adapter_config.json')} is not valid JSON ({e})") from e
    if svd_cache_dir is not None:
        config.svd_cache_dir = os.fspath(svd_cache_dir)
    weights = os.path.join(directory, SAFETENSORS_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        found = sorted(f for f in os.listdir(directory) if f.startswith("adapter_model"))
        raise FileNotFoundError(
            f"No {SAFETENSORS_WEIGHTS_NAME} in {directory!r} (found {found or 'no adapter weights'}). "
            "LoRA-Dash loads adapter weights from safetensors only; pickle files (.bin, .pt) are not opened, "
            "since unpickling can run arbitrary code. Convert a checkpoint you trust with "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), ...)."
        )
    try:  # a truncated or overwritten file: say which, before peft fails on it with a bare header error
        with safe_open(weights, framework="pt") as f:
            f.keys()
    except SafetensorError as e:
        raise ValueError(f"{weights} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    config.inference_mode = not is_trainable
    model = PeftModel.from_pretrained(
        base_model, directory, adapter_name=adapter_name, is_trainable=is_trainable, config=config, **kwargs
    )
    _check_complete(model, weights, adapter_name)
    return model


def _check_complete(model: Any, path: str, adapter_name: str) -> None:
    with safe_open(path, framework="pt") as f:
        saved = set(f.keys())
    expected = set(get_peft_model_state_dict(model, adapter_name=adapter_name))
    missing = sorted(expected - saved)
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} LoRA-Dash tensors, e.g. {missing[:3]}")
