"""Images from a (possibly adapted) UNet through diffusers' stock `StableDiffusionXLPipeline`, and PNG grids.

Each image has its own generator seeded by its seed, so an image does not depend on the batch it was drawn in:
the same (prompt, seed) gives the same image whichever run, batch size or method draws it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from experiments.dreambooth.models import Frozen


def unet_of(model: torch.nn.Module) -> torch.nn.Module:
    """The UNet module a pipeline runs: a peft model's base model (its target layers carry the adapter), or the
    model itself (full fine-tuning)."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def pipeline(parts: Frozen, unet: torch.nn.Module) -> Any:
    import diffusers
    from diffusers import StableDiffusionXLPipeline

    scheduler_cls = getattr(diffusers, parts.inference_scheduler_class)
    return StableDiffusionXLPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        text_encoder_2=parts.text_encoder_2,
        tokenizer=parts.tokenizer,
        tokenizer_2=parts.tokenizer_2,
        unet=unet,
        scheduler=scheduler_cls.from_config(parts.inference_scheduler_config),
        add_watermarker=False,  # the watermark would change every pixel the metrics read
    )


@torch.no_grad()
def generate(
    parts: Frozen,
    unet: torch.nn.Module,
    jobs: list[tuple[str, int]],
    *,
    resolution: int,
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int,
    device: Any,
) -> list[Any]:
    """One PIL image per (prompt, seed) of `jobs`, in order."""
    was_training = unet.training
    unet.eval()
    pipe = pipeline(parts, unet)
    pipe.set_progress_bar_config(disable=True)
    images: list[Any] = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        gens = [
            torch.Generator(device="cpu").manual_seed(seed) for _, seed in chunk
        ]  # CPU: same on any device
        latents = torch.stack([
            torch.randn(
                (unet.config.in_channels, resolution // pipe.vae_scale_factor, resolution // pipe.vae_scale_factor),
                generator=g,
            )
            for g in gens
        ]).to(device=device, dtype=unet.dtype)  # fmt: skip
        out = pipe(
            prompt=[p for p, _ in chunk],
            height=resolution,
            width=resolution,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            latents=latents,
            output_type="pil",
        )
        images.extend(out.images)
    unet.train(was_training)
    return images


def image_grid(images: list[Any], *, cols: int, labels: list[str] | None = None, cell: int = 128) -> Any:
    """Images in rows of `cols` (thumbnails of `cell` px), with an optional label strip above each row."""
    from PIL import Image, ImageDraw

    rows = (len(images) + cols - 1) // cols
    strip = 14 if labels else 0
    grid = Image.new("RGB", (cols * cell, rows * (cell + strip)), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im.convert("RGB").resize((cell, cell)), (c * cell, r * (cell + strip) + strip))
        if labels and c == 0:
            draw.text((2, r * (cell + strip)), labels[r][: cols * cell // 6], fill="black")
    return grid


def save_grid(images: list[Any], path: Path, *, cols: int, labels: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, cols=cols, labels=labels).save(path, format="PNG")
    return path


def side_by_side(grids: dict[str, Path], out: Path, *, header: int = 16) -> Path:
    """The per-run grids of several experiments (same subject, prompts and seeds: rows are prompts) next to each
    other, each under its name: methods side by side per prompt. `grids`: experiment -> its run's PNG."""
    from PIL import Image, ImageDraw

    ims = {name: Image.open(p).convert("RGB") for name, p in grids.items()}
    width = sum(im.width for im in ims.values())
    height = header + max(im.height for im in ims.values())
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for name, im in ims.items():
        canvas.paste(im, (x, header))
        draw.text((x + 2, 2), name, fill="black")
        x += im.width
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out
