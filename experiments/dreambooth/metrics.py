"""The DreamBooth paper's metrics (Ruiz et al., CVPR 2023, section 4.1), per generated image:

- DINO: mean cosine similarity of the image's DINO ViT-S/16 [CLS] embedding to those of the real subject images;
- CLIP-I: the same with CLIP ViT-B/32 image embeddings;
- CLIP-T: cosine similarity of the image's CLIP embedding to its prompt's (the identifier removed);
- drift (ours): 1 - DINO cosine between an image of the adapted model and the base model's image for the same
  unrelated prompt and seed (how much fine-tuning changed what the model draws for other things; lower is
  better).

A subject's score is the mean over its images (25 prompts x N seeds). Hub models for GPU users:
`facebook/dino-vits16` (transformers ViTModel) and `openai/clip-vit-base-patch32` (CLIPModel); `tiny:vit` and
`tiny:clip` are random models built from configs for tests (their numbers measure nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# DreamBooth (Ruiz et al., CVPR 2023) Table 1: the reference the metric code is read against (not comparable to
# SDXL runs in absolute terms: other subjects' mix, other base models, 4 images per prompt as here).
DREAMBOOTH_TABLE1 = {
    "Real Images": {"dino": 0.774, "clip_i": 0.885, "clip_t": None},
    "DreamBooth (Imagen)": {"dino": 0.696, "clip_i": 0.812, "clip_t": 0.306},
    "DreamBooth (Stable Diffusion)": {"dino": 0.668, "clip_i": 0.803, "clip_t": 0.305},
    "Textual Inversion (Stable Diffusion)": {"dino": 0.569, "clip_i": 0.780, "clip_t": 0.255},
}
DINO_HUB = "facebook/dino-vits16"
CLIP_HUB = "openai/clip-vit-base-patch32"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
TINY_SEED = 4321


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to `resize` (bicubic), centre-crop `crop`, normalise (the models' processors)."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: list[Any]) -> torch.Tensor:
        from PIL import Image

        out = []
        for im in images:
            w, h = im.size
            s = self.resize / min(w, h)
            im = im.convert("RGB").resize(
                (max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC
            )
            w, h = im.size
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            arr = (
                np.asarray(im.crop((left, top, left + self.crop, top + self.crop)), dtype=np.float32) / 255.0
            )
            out.append(torch.from_numpy(arr).permute(2, 0, 1))
        x = torch.stack(out)
        mean, std = torch.tensor(self.mean).view(1, 3, 1, 1), torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


def _seeded(build: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return build()


def _unit_embeddings(
    images: list[Any],
    batch_size: int,
    prep: Any,
    device: Any,
    features: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """`features` of the preprocessed images, batch by batch, as unit-norm fp32 rows [n, d] on the CPU."""
    out = [
        features(prep(images[i : i + batch_size]).to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


class DinoEncoder:
    """[CLS] embeddings of a DINO ViT (DreamBooth's DINO metric uses ViT-S/16)."""

    def __init__(self, name: str, device: Any):
        from transformers import ViTConfig, ViTModel

        if name == "tiny:vit":
            cfg = ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37)  # fmt: skip
            self.model = _seeded(lambda: ViTModel(cfg, add_pooling_layer=False))
        else:
            self.model = ViTModel.from_pretrained(name, add_pooling_layer=False, use_safetensors=True)
        # dino-vits16's ViTImageProcessor: shorter side to 256, centre crop 224 (scaled to the model's input)
        size = self.model.config.image_size
        self.prep = Preprocess(round(size * 256 / 224), size, IMAGENET_MEAN, IMAGENET_STD)
        self.model.to(device).eval().requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def embed(self, images: list[Any], batch_size: int = 32) -> torch.Tensor:
        """Unit-norm [CLS] embeddings [n, d] (fp32)."""
        return _unit_embeddings(
            images,
            batch_size,
            self.prep,
            self.device,
            lambda x: self.model(pixel_values=x).last_hidden_state[:, 0],
        )


class ClipEncoder:
    """CLIP image and text embeddings (CLIP-I and CLIP-T use ViT-B/32)."""

    def __init__(self, name: str, device: Any, *, tiny_tokenizer: Any = None):
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

        if name == "tiny:clip":
            assert tiny_tokenizer is not None, "tiny:clip needs the tiny tokenizer"
            cfg = CLIPConfig(
                text_config=dict(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=37,
                                 num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                                 bos_token_id=len(tiny_tokenizer) - 2, eos_token_id=len(tiny_tokenizer) - 1,
                                 pad_token_id=len(tiny_tokenizer) - 1),
                vision_config=dict(image_size=32, patch_size=16, hidden_size=32, intermediate_size=37,
                                   num_attention_heads=4, num_hidden_layers=2),
                projection_dim=16,
            )  # fmt: skip
            self.model = _seeded(lambda: CLIPModel(cfg))
            self.tokenizer = tiny_tokenizer
        else:
            self.model = CLIPModel.from_pretrained(name, use_safetensors=True)
            self.tokenizer = CLIPTokenizer.from_pretrained(name)
        size = self.model.config.vision_config.image_size  # CLIPImageProcessor: shorter side to 224, crop 224
        self.prep = Preprocess(size, size, CLIP_MEAN, CLIP_STD)
        self.model.to(device).eval().requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def embed_images(self, images: list[Any], batch_size: int = 32) -> torch.Tensor:
        def features(x: torch.Tensor) -> torch.Tensor:
            feats = self.model.get_image_features(pixel_values=x)
            return getattr(feats, "pooler_output", feats)  # transformers 5 may return a model output

        return _unit_embeddings(images, batch_size, self.prep, self.device, features)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(
            self.device
        )
        feats = self.model.get_text_features(**enc)
        feats = getattr(feats, "pooler_output", feats)
        return torch.nn.functional.normalize(feats.float().cpu(), dim=-1)


def similarity_to_references(gen: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """Per generated image: mean cosine similarity to the reference images ([n, d] x [m, d] unit rows -> [n])."""
    return (gen @ ref.T).mean(dim=1).double().numpy()


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine similarity of unit rows ([n, d] x [n, d] -> [n])."""
    return (a * b).sum(dim=1).double().numpy()


def leave_one_out_similarity(emb: torch.Tensor) -> float | None:
    """Mean cosine similarity over ordered pairs of distinct rows (unit rows [m, d]); None for one row."""
    m = emb.shape[0]
    if m < 2:
        return None
    sims = emb @ emb.T
    return float((sims.sum() - sims.diagonal().sum()) / (m * (m - 1)))
