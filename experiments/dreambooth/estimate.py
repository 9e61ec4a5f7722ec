"""GPU memory and hours of a DreamBooth run on SDXL, for `list --estimate`.

The UNet is built on the meta device from SDXL base 1.0's config (no weights, no download), so the trainable
counts are exact (the method's analytic count over the UNet's target layers; full fine-tuning: every UNet
weight). Memory and time are rough, from the stated assumptions.
"""

from __future__ import annotations

from typing import Any

from baselines import build_method
from baselines.budget import base_param_count, target_layer_shapes
from experiments.dreambooth.models import SDXL, sdxl_meta_unet
from experiments.harness.config import ExperimentConfig

FROZEN_PARAMS = 123_060_480 + 694_659_840 + 83_653_863  # CLIP ViT-L text, OpenCLIP bigG text (+proj), VAE
ASSUMPTIONS = {
    "activation_gb_per_image_at_1024": 14.0,  # fp16 SDXL UNet forward + backward, no gradient checkpointing
    "seconds_per_micro_batch_image": 0.45,  # one 1024 px image, forward + backward, one H100
    "seconds_per_generated_image": 5.0,  # 50 Euler steps with classifier-free guidance (2 UNet passes), H100
    "bytes_per_trainable": 16,  # fp32 weight + grad + two Adam moments (frozen weights: model.dtype)
}


def estimate_run(cfg: ExperimentConfig) -> dict[str, Any] | None:
    if cfg.model.name != SDXL:
        return None  # tiny models run on the CPU
    a = ASSUMPTIONS
    unet = sdxl_meta_unet()
    total = base_param_count(unet, list(cfg.model.modules_to_save))
    method = build_method(cfg.method.name, **cfg.method.params)
    shapes = target_layer_shapes(unet, list(cfg.model.target_modules)) if method.needs_target_modules else []
    trainable = type(method).analytic_trainable(shapes, method.rank, total, **method.params)
    weight_bytes = {"float32": 4, "float16": 2, "bfloat16": 2}[cfg.model.dtype]
    t, d, e = cfg.train, cfg.data, cfg.eval
    micro = t.batch_size // t.grad_accum
    scale = (d.resolution / 1024) ** 2
    images_per_micro = micro * (2 if d.prior_preservation else 1)
    acts = a["activation_gb_per_image_at_1024"] * scale * images_per_micro
    if cfg.model.gradient_checkpointing:
        acts /= 4
    memory_gb = (
        (total - trainable) * weight_bytes + FROZEN_PARAMS * 2 + trainable * a["bytes_per_trainable"]
    ) / 1e9 + acts
    steps = t.max_steps or 0
    train_h = (
        steps * t.batch_size * images_per_micro / micro * a["seconds_per_micro_batch_image"] * scale / 3600
    )
    n_prompts = min(25, e.max_prompts or 25)
    n_images = n_prompts * e.images_per_prompt + 2 * len(e.drift_prompts)
    n_images += d.num_class_images if d.prior_preservation else 0
    gen_h = n_images * a["seconds_per_generated_image"] * scale * e.num_inference_steps / 50 / 3600
    out: dict[str, Any] = {
        "total_params": total,
        "trainable": trainable,
        "steps": steps,
        "memory_gb": memory_gb,
        "fits_80gb": memory_gb < 80,
        "gpu_hours": train_h + gen_h,
        "layout": f"{micro} x {t.grad_accum}",
        "eval_every": t.eval_every,
        "assumptions": f"one H100, {ASSUMPTIONS}",
    }
    params = method.params
    if "prelaunch_steps" in params and params.get("prelaunch_clock", "optimizer_step") == "optimizer_step":
        launch = max(int(params["prelaunch_steps"]), 1)
        out["launch_update"] = launch if launch <= steps else None
    return out
