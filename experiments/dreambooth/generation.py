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


def _wrapped(draw: Any, text: str, width_px: int) -> list[str]:
    """`text` in lines that fit `width_px` with PIL's default font (measured, not guessed)."""
    words, lines, line = text.split(), [], ""
    for w in words:
        trial = f"{line} {w}".strip()
        if line and draw.textlength(trial) > width_px - 4:
            lines.append(line)
            line = w
        else:
            line = trial
    return [*lines, line] if line else lines or [""]


LINE = 12  # px per label line (PIL's default font is 11 px high)


def image_grid(images: list[Any], *, cols: int, labels: list[str] | None = None, cell: int = 128,
               reference: list[Any] | None = None, reference_label: str = "real images") -> Any:  # fmt: skip
    """Images in rows of `cols` (thumbnails of `cell` px), each row under its label wrapped to the row's width;
    with `reference`, a first row of the subject's real images (up to `cols`) to compare the rest against."""
    from PIL import Image, ImageDraw

    rows = [images[i : i + cols] for i in range(0, len(images), cols)]
    row_labels = list(labels) if labels else [""] * len(rows)
    if reference:
        rows.insert(0, reference[:cols])
        row_labels.insert(0, reference_label)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrapped(measure, lab, cols * cell) if labels or reference else [] for lab in row_labels]
    heights = [cell + (LINE * len(w) + 2 if w else 0) for w in wrapped]
    grid = Image.new("RGB", (cols * cell, sum(heights)), "white")
    draw = ImageDraw.Draw(grid)
    y = 0
    for row, lines, h in zip(rows, wrapped, heights, strict=True):
        for k, line in enumerate(lines):
            draw.text((2, y + 1 + k * LINE), line, fill="black")
        top = y + h - cell
        for c, im in enumerate(row):
            grid.paste(im.convert("RGB").resize((cell, cell)), (c * cell, top))
        y += h
    return grid


def save_png(image: Any, path: Path) -> Path:
    """An image as PNG, written atomically (a full disk or a kill never leaves a truncated picture)."""
    import io

    from experiments.harness.records import write_bytes_atomic

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue(), suffix=".png")
    return path


def side_by_side(grids: dict[str, Path], out: Path) -> Path:
    """The per-run grids of several experiments (same subject, prompts and seeds: rows are prompts) next to each
    other, each under its name wrapped to its column's width: methods side by side per prompt. `grids`:
    experiment -> its run's PNG."""
    from PIL import Image, ImageDraw

    ims = {name: Image.open(p).convert("RGB") for name, p in grids.items()}
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = {name: _wrapped(measure, name, im.width) for name, im in ims.items()}
    header = LINE * max(len(v) for v in names.values()) + 4
    width = sum(im.width for im in ims.values())
    height = header + max(im.height for im in ims.values())
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for name, im in ims.items():
        canvas.paste(im, (x, header))
        for k, line in enumerate(names[name]):
            draw.text((x + 2, 2 + k * LINE), line, fill="black")
        x += im.width
    return save_png(canvas, out)
