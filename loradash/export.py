"""Export a LoRA-Dash adapter as a plain LoRA adapter of rank r + s, in peft's or diffusers' file layout."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict
from safetensors.torch import save_file

from .card import unlaunched_message
from .clock import LoraDashWarning
from .config import LoraDashConfig
from .model import dash_layers

__all__ = ["export_as_lora", "lora_equivalent", "LAYOUTS", "DIFFUSERS_WEIGHT_NAME"]

LAYOUTS = ("peft", "diffusers")
# What diffusers' `load_lora_weights` / `load_lora_adapter` look for (diffusers.loaders.lora_base).
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
# The LoraConfig fields that decide what a LoRA adapter computes: the metadata diffusers reads back.
_DIFFUSERS_CONFIG_FIELDS = (
    "r",
    "lora_alpha",
    "lora_dropout",
    "rank_pattern",
    "alpha_pattern",
    "use_rslora",
    "use_dora",
    "lora_bias",
    "bias",
    "fan_in_fan_out",
    "init_lora_weights",
)
_PEFT_PREFIX = (
    "base_model.model."  # peft's adapter state-dict keys start with the PeftModel's path to the model
)


def lora_equivalent(model: Any, adapter_name: str = "default") -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """The rank r + s plain-LoRA adapter equal to a LoRA-Dash adapter: (peft state dict on CPU, LoraConfig).

    The update (alpha/r) B A + U_s diag(lambda) Vh_s has rank <= r + s: stack A' = [A; diag(lambda) Vh_s]
    ((r+s) x in) and B' = [(alpha/r) B, U_s] (out x (r+s)) and set lora_alpha = r + s so LoRA's scaling is 1.
    """
    config = model.peft_config[adapter_name]
    if not isinstance(config, LoraDashConfig):
        raise TypeError(f"adapter {adapter_name!r} is not a LoRA-Dash adapter")
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    s = config.num_directions
    for name, module, adapter in dash_layers(model, adapter_name):
        if module.merged:
            raise RuntimeError(f"{name} is merged; unmerge before export_as_lora")
        key = name  # peft's adapter state-dict keys are the module path without the adapter name
        A = module.lora_A[adapter].weight.detach().float()  # [r, in]
        B = module.lora_B[adapter].weight.detach().float()  # [out, r]
        lam = module.lora_dash_lambda[adapter].weight.detach().float()  # [s]
        U = module.lora_dash_U[adapter].float()  # [out, s]
        Vh = module.lora_dash_Vh[adapter].float()  # [s, in]
        scaling = module.scaling[adapter]
        dtype = module.lora_A[adapter].weight.dtype
        state[f"{key}.lora_A.weight"] = torch.cat([A, lam[:, None] * Vh], dim=0).to(dtype)  # [r+s, in]
        state[f"{key}.lora_B.weight"] = torch.cat([B * scaling, U], dim=1).to(dtype)  # [out, r+s]
        if f"{key}.lora_B.bias" in state:  # lora_bias is scaled with B in peft's forward
            state[f"{key}.lora_B.bias"] = (state[f"{key}.lora_B.bias"].float() * scaling).to(dtype)
        for k in [k for k in state if k.startswith(f"{key}.lora_dash_")]:
            del state[k]

    fields = {f.name for f in dataclasses.fields(LoraConfig)} - {"peft_type"}
    values = {k: getattr(config, k) for k in fields if k in config.__dict__}
    rank_pattern = {k: v + s for k, v in (config.rank_pattern or {}).items()}
    values.update(
        r=config.r + s,
        lora_alpha=config.r + s,
        use_rslora=False,
        rank_pattern=rank_pattern,
        # scaling 1 everywhere: alpha equals the (new) rank of every layer
        alpha_pattern={
            k: rank_pattern.get(k, config.r + s) for k in {*rank_pattern, *(config.alpha_pattern or {})}
        },
        init_lora_weights=True,
        inference_mode=True,
    )
    cpu = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return cpu, LoraConfig(**values)


def export_as_lora(
    model: Any,
    directory: str | os.PathLike[str],
    adapter_name: str = "default",
    *,
    layout: str | None = None,
    prefix: str | None = None,
) -> None:
    """Write a plain LoRA adapter of rank r + s that reproduces the LoRA-Dash model (up to fp32 rounding).

    Args:
        model: the `peft.PeftModel` returned by `get_loradash_model` / `from_pretrained` (not merged).
        directory: the output folder (created if needed).
        layout: "peft": `adapter_config.json` + `adapter_model.safetensors`, for stock
            `peft.PeftModel.from_pretrained` and serving stacks that read peft LoRA folders (vLLM).
            "diffusers": `pytorch_lora_weights.safetensors` with `<prefix>.`-prefixed keys and diffusers' LoRA
            metadata (rank, alpha and target modules, so no adapter_config.json), for
            `pipeline.load_lora_weights(directory)` (e.g. StableDiffusionXLPipeline) and
            `unet.load_lora_adapter(directory, prefix="unet")`.
            None (default): "diffusers" when the adapted model is a diffusers model (diffusers would find nothing
            to load in a peft folder), "peft" otherwise; a model that only contains diffusers modules is refused
            (pass `layout=`).
        prefix: the pipeline component the adapter belongs to, for the "diffusers" layout; None (default): "unet"
            for a diffusers UNet, "transformer" for a diffusers transformer (DiT-style pipelines).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if layout is None:
        layout = _default_layout(base)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "diffusers" and prefix is None:
        prefix = _default_prefix(base)
    _warn_if_unlaunched(model, adapter_name)
    state, lora_config = lora_equivalent(model, adapter_name)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    if layout == "peft":
        lora_config.save_pretrained(directory)
        save_file(state, os.path.join(directory, SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
        return
    assert prefix is not None
    tensors, metadata = diffusers_layout(state, lora_config, prefix=prefix)
    save_file(tensors, os.path.join(directory, DIFFUSERS_WEIGHT_NAME), metadata=metadata)


def _is_diffusers(module: Any) -> bool:
    return type(module).__module__.split(".")[0] == "diffusers"


def _default_layout(base: Any) -> str:
    if _is_diffusers(base):
        return "diffusers"
    inner = next((name for name, m in base.named_modules() if name and _is_diffusers(m)), None)
    if inner is not None:
        raise ValueError(
            f"export_as_lora: {type(base).__name__} holds the diffusers module {inner!r} but is not one itself, so "
            "neither file layout is the obvious one: pass layout='peft' or layout='diffusers' (with prefix=)"
        )
    return "peft"


def _default_prefix(base: Any) -> str:
    name = type(base).__name__
    if _is_diffusers(base) and "UNet" in name:
        return "unet"
    if _is_diffusers(base) and "Transformer" in name:
        return "transformer"
    raise ValueError(
        f"export_as_lora: which pipeline component a {name} is cannot be told: pass prefix= ('unet', "
        "'transformer', ...) with layout='diffusers'"
    )


def _warn_if_unlaunched(model: Any, adapter_name: str) -> None:
    """Exporting an adapter that has trained (LoRA's B moved from its zero init) but not launched gives a plain
    LoRA adapter: say so."""
    config = model.peft_config.get(adapter_name)
    layers = [(m, a) for _, m, a in dash_layers(model, adapter_name)]
    if not isinstance(config, LoraDashConfig) or not layers:
        return
    launched = sum(m.is_launched(a) for m, a in layers)
    zero_init = config.init_lora_weights in (True, "gaussian")
    trained = not zero_init or any(bool(m.lora_B[a].weight.detach().any()) for m, a in layers)
    if launched < len(layers) and trained:
        message = unlaunched_message(
            "exporting", len(layers), launched, config.prelaunch_steps, config.prelaunch_clock
        )
        warnings.warn(message, LoraDashWarning, stacklevel=3)


def diffusers_layout(
    state: dict[str, torch.Tensor], config: LoraConfig, *, prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """peft adapter keys -> diffusers' (`<prefix>.<module>.lora_A.weight`), and the safetensors metadata that
    diffusers turns back into the LoraConfig (`lora_adapter_metadata`: JSON of `<prefix>.<field>`)."""
    if not prefix or "." in prefix:
        raise ValueError(f"prefix must be a pipeline component name such as 'unet', got {prefix!r}")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(_PEFT_PREFIX) or not (".lora_A." in key or ".lora_B." in key):
            raise ValueError(
                f"{key}: diffusers' LoRA files hold LoRA factors only; modules_to_save, trainable tokens and "
                "other extra weights cannot be exported in this layout"
            )
        tensors[f"{prefix}.{key.removeprefix(_PEFT_PREFIX)}"] = value
    modules = sorted({k.removeprefix(_PEFT_PREFIX).rsplit(".lora_", 1)[0] for k in state})
    fields: dict[str, Any] = {f: getattr(config, f) for f in _DIFFUSERS_CONFIG_FIELDS}
    fields["target_modules"] = modules  # exact module paths: no pattern to re-resolve on the bare model
    meta = json.dumps({f"{prefix}.{k}": v for k, v in fields.items()}, indent=2, sort_keys=True)
    return tensors, {"format": "pt", DIFFUSERS_METADATA_KEY: meta}
