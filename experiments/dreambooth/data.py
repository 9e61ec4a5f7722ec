"""DreamBooth data: subjects, their classes, the 25 evaluation prompts, and instance images as tensors.

The layout is google/dreambooth's (commit 4f887af7): `dataset/<subject>/*.jpg` and `prompts_and_classes.txt`
(subject -> class rows, then the object and live-subject prompt lists, each a Python list of
`'a {0} {1} ...'.format(unique_token, class_token)`). Any folder in that layout works (`data.data_dir`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.harness.datadir import shared_data_dir
from experiments.harness.errors import MissingFileError

DATA_ENV_VAR = "LORADASH_DREAMBOOTH_DIR"
PROMPTS_FILE = "prompts_and_classes.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# The DreamBooth paper's "live subjects" (its live-subject prompt list: outfits and accessories) are its dogs and
# cats; every other class is an object.
LIVE_CLASSES = frozenset({"dog", "cat"})


def default_data_dir() -> Path:
    """`$LORADASH_DREAMBOOTH_DIR`, else `<repo>/../shared/data/dreambooth`."""
    return shared_data_dir(DATA_ENV_VAR, "dreambooth", what="DreamBooth", hint="clone github.com/google/dreambooth "
                           "and set data.data_dir (or the variable) to its folder")  # fmt: skip


@dataclass(frozen=True)
class PromptSpec:
    classes: dict[str, str]  # subject -> class noun
    object_prompts: tuple[str, ...]  # templates with {0} = token, {1} = class
    live_prompts: tuple[str, ...]


def _prompt_list(block: str, path: Path, which: str) -> tuple[str, ...]:
    m = re.search(r"prompt_list\s*=\s*\[(.*?)\]", block, re.S)
    if not m:
        raise ValueError(f"{path}: no prompt_list under '{which}'")
    # each entry is 'template'.format(unique_token, class_token): keep the literal
    templates = [ast.literal_eval(s) for s in re.findall(r"('(?:[^'\\]|\\.)*')\s*\.format\(", m.group(1))]
    if not templates or not all("{0}" in t and "{1}" in t for t in templates):
        raise ValueError(f"{path}: the '{which}' prompt_list has no '...{{0}} {{1}}...'.format(...) entries")
    return tuple(templates)


def read_prompts(path: Path) -> PromptSpec:
    """Parse `prompts_and_classes.txt` (a ValueError names the file and what is missing)."""
    text = path.read_text(encoding="utf-8")
    head, sep, rest = text.partition("Object Prompts")
    obj, sep2, live = rest.partition("Live Subject Prompts")
    if not sep or not sep2:
        raise ValueError(f"{path}: expected 'Object Prompts' and 'Live Subject Prompts' sections")
    classes: dict[str, str] = {}
    for line in head.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and all(parts) and parts != ["subject_name", "class"]:
            classes[parts[0]] = parts[1]
    if not classes:
        raise ValueError(f"{path}: no 'subject_name,class' rows")
    return PromptSpec(
        classes, _prompt_list(obj, path, "Object Prompts"), _prompt_list(live, path, "Live Subject Prompts")
    )


def evaluation_prompts(spec: PromptSpec, class_name: str, token: str) -> list[str]:
    """The 25 prompts of the subject's list (live subjects: dogs and cats), filled with token and class."""
    templates = spec.live_prompts if class_name in LIVE_CLASSES else spec.object_prompts
    return [t.format(token, class_name) for t in templates]


def without_token(prompt: str, token: str) -> str:
    """The prompt CLIP-T scores against: the identifier removed ("a sks dog in the snow" -> "a dog in the
    snow"), since a text encoder that never saw the rare token has no meaning for it."""
    return re.sub(rf"\s*\b{re.escape(token)}\b", "", prompt).strip()


def instance_files(data_dir: Path, subject: str) -> list[Path]:
    folder = data_dir / "dataset" / subject
    if not folder.is_dir():
        known = (
            sorted(p.name for p in (data_dir / "dataset").iterdir())
            if (data_dir / "dataset").is_dir()
            else []
        )
        raise MissingFileError(
            f"no DreamBooth subject folder {folder} (subjects there: {', '.join(known) or 'none'})"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image(path: Path):  # -> PIL.Image.Image
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except OSError as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def to_training_tensor(
    image, resolution: int, *, center_crop: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """As the SDXL DreamBooth script: resize the shorter side to `resolution` (bilinear), crop the centre (or the
    top-left corner) to resolution x resolution, scale to [-1, 1]. Returns the pixels [3, R, R] and the SDXL
    micro-conditioning inputs [4]: original (h, w) and crop (top, left)."""
    import numpy as np
    from PIL import Image

    w0, h0 = image.size
    scale = resolution / min(w0, h0)
    w, h = max(resolution, round(w0 * scale)), max(resolution, round(h0 * scale))
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    top, left = ((h - resolution) // 2, (w - resolution) // 2) if center_crop else (0, 0)
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return pixels, torch.tensor([h0, w0, top, left], dtype=torch.float32)
