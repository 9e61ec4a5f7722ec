"""The diffusion components of a DreamBooth run: SDXL from the hub (or a local copy), or tiny random ones.

`model.name` picks them:
- a hub id or a local folder in the diffusers layout (`stabilityai/stable-diffusion-xl-base-1.0`): `unet/`,
  `vae/`, `text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`, `scheduler/`; `data.vae` may name a
  separate VAE (the fp16-fix VAE `madebyollin/sdxl-vae-fp16-fix`, as the paper);
- `tiny:sdxl`: an SDXL-shaped pipeline (two CLIP text encoders, pooled text embeddings and added time ids, a
  UNet with `text_time` conditioning) a few thousand times smaller, built from configs with random weights
  seeded by a fixed seed (the same "base model" in every run and process, nothing downloaded). Its numbers
  measure nothing: records of it say `identity.model.random_weights: true`.

Only the UNet is what a method wraps (`build_unet`); the VAE, text encoders, tokenizers and scheduler are frozen
and belong to the run (`Frozen`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

TINY_PREFIX = "tiny:"
TINY_SEED = 1234  # fixed: every build of a tiny model gives the same weights (the runs' shared base model)
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"

# SDXL base 1.0 `unet/config.json` (the values that differ from UNet2DConditionModel's defaults): the meta-device
# UNet for `list --estimate` and the exact trainable counts, without hub access.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

# The tiny SDXL-shaped pipeline. Text encoders: 32 wide each, so the UNet's cross-attention width is 32 + 32 (the
# concatenated penultimate hidden states, as SDXL's 768 + 1280) and its added embedding takes 6 time ids x 8 +
# the 32-wide pooled projection of the second encoder (SDXL: 6 x 256 + 1280 = 2816).
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                 max_position_embeddings=77, projection_dim=32, hidden_act="gelu")  # fmt: skip
TINY_UNET: dict[str, Any] = {
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "attention_head_dim": [2, 4],
    "block_out_channels": [16, 32],
    "cross_attention_dim": 64,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
    "sample_size": 16,
    "transformer_layers_per_block": [1, 1],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
TINY_VAE: dict[
    str, Any
] = {  # three blocks: 8x downsampling would need four; 4x keeps 64 px images at 16 x 16
    "block_out_channels": [8, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
    "force_upcast": False,  # as the paper's fp16-fix VAE: decodes in fp16 (SDXL's own VAE is upcast to fp32)
}
TINY_SCHEDULER: dict[str, Any] = {  # SDXL's scheduler config (scaled-linear betas, epsilon prediction)
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def is_tiny(name: str) -> bool:
    return name.startswith(TINY_PREFIX)


def check_model_name(name: str) -> str | None:
    """The problem with `model.name`, or None."""
    if is_tiny(name) and name != f"{TINY_PREFIX}sdxl":
        return f"unknown tiny model {name!r} (known: {TINY_PREFIX}sdxl)"
    return None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's byte -> printable character table (the alphabet of a byte-level BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@cache
def tiny_tokenizer_dir() -> str:
    """A CLIP tokenizer with no merges (every word is spelled out in bytes): vocab.json + merges.txt in a
    temporary folder, written once per process. 514 tokens: 256 bytes, 256 word-final bytes, start and end."""
    chars = list(_bytes_to_unicode().values())
    vocab = {
        tok: i
        for i, tok in enumerate([*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"])
    }
    d = Path(tempfile.mkdtemp(prefix="dreambooth-tiny-tokenizer-"))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return str(d)


def tiny_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    d = tiny_tokenizer_dir()
    return CLIPTokenizer(f"{d}/vocab.json", f"{d}/merges.txt", model_max_length=77)


def _seeded(build: Any, seed: int) -> Any:
    """`build()` under a fixed seed without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_unet(name: str, *, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The UNet the method wraps. Under `accelerate.init_empty_weights` (preflight) it lands on the meta device."""
    from diffusers import UNet2DConditionModel

    if is_tiny(name):
        unet = _seeded(lambda: UNet2DConditionModel(**TINY_UNET), TINY_SEED)
        return unet if dtype == torch.float32 else unet.to(dtype)
    return UNet2DConditionModel.from_pretrained(
        name, subfolder="unet", torch_dtype=dtype, use_safetensors=True
    )


def sdxl_meta_unet() -> torch.nn.Module:
    """SDXL base 1.0's UNet on the meta device (its architecture, no weights): exact parameter counts."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_UNET_CONFIG)  # type: ignore[return-value]  # an nn.Module; diffusers' stubs say otherwise


@dataclass
class Frozen:
    """The frozen parts of the pipeline (never wrapped, never trained)."""

    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    noise_scheduler: Any  # DDPMScheduler: training noise
    inference_scheduler_config: dict[str, Any]  # the pipeline's own sampler (SDXL: Euler discrete)
    inference_scheduler_class: str

    def to(self, device: Any) -> Frozen:
        for m in (self.vae, self.text_encoder, self.text_encoder_2):
            m.to(device)
        return self


def build_frozen(name: str, *, vae: str | None = None, dtype: torch.dtype = torch.float32) -> Frozen:
    """VAE, text encoders, tokenizers and schedulers of `name` (see the module docstring), in eval mode with
    requires_grad off."""
    from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if is_tiny(name):
        tok = tiny_tokenizer()
        text = CLIPTextConfig(vocab_size=len(tok), bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1,
                              pad_token_id=len(tok) - 1, **TINY_TEXT)  # fmt: skip
        te1 = _seeded(lambda: CLIPTextModel(text), TINY_SEED + 1)
        te2 = _seeded(lambda: CLIPTextModelWithProjection(text), TINY_SEED + 2)
        vae_model = _seeded(lambda: AutoencoderKL(**TINY_VAE), TINY_SEED + 3)
        noise = DDPMScheduler(**TINY_SCHEDULER)
        noise_config = dict(noise.config)  # type: ignore[attr-defined]  # set by diffusers' register_to_config
        parts = Frozen(vae_model, te1, te2, tok, tiny_tokenizer(), noise, noise_config,
                       EulerDiscreteScheduler.__name__)  # fmt: skip
    else:
        from diffusers import DiffusionPipeline

        kw: dict[str, Any] = {"torch_dtype": dtype, "use_safetensors": True}
        vae_model = (AutoencoderKL.from_pretrained(vae, **kw) if vae
                     else AutoencoderKL.from_pretrained(name, subfolder="vae", **kw))  # fmt: skip
        sched_cfg = DiffusionPipeline.load_config(name, subfolder="scheduler")
        parts = Frozen(
            vae=vae_model,
            text_encoder=CLIPTextModel.from_pretrained(name, subfolder="text_encoder", **kw),
            text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
                name, subfolder="text_encoder_2", **kw
            ),
            tokenizer=CLIPTokenizer.from_pretrained(name, subfolder="tokenizer"),
            tokenizer_2=CLIPTokenizer.from_pretrained(name, subfolder="tokenizer_2"),
            noise_scheduler=DDPMScheduler.from_pretrained(name, subfolder="scheduler"),
            inference_scheduler_config=dict(sched_cfg),
            inference_scheduler_class=str(sched_cfg.get("_class_name", EulerDiscreteScheduler.__name__)),
        )
    for m in (parts.vae, parts.text_encoder, parts.text_encoder_2):
        if m.dtype != dtype:
            m.to(dtype)
        m.eval().requires_grad_(False)
    return parts


@torch.no_grad()
def encode_prompts(parts: Frozen, prompts: list[str], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text conditioning (as `StableDiffusionXLPipeline.encode_prompt` and the DreamBooth SDXL script):
    the penultimate hidden states of both encoders concatenated [n, 77, d1 + d2], and the second encoder's
    pooled projection [n, d_proj]."""
    states, pooled = [], None
    for tok, enc in ((parts.tokenizer, parts.text_encoder), (parts.tokenizer_2, parts.text_encoder_2)):
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)  # fmt: skip
        out = enc(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder's: text_embeds of CLIPTextModelWithProjection
    assert pooled is not None
    return torch.cat(states, dim=-1), pooled


def add_time_ids(sizes: torch.Tensor, resolution: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's micro-conditioning per image [n, 6]: (original h, w, crop top, left, target h, w), as the SDXL
    DreamBooth script computes it. `sizes` [n, 4] holds each image's original (h, w) and crop (top, left)."""
    target = torch.tensor([resolution, resolution], dtype=sizes.dtype).expand(sizes.shape[0], 2)
    return torch.cat([sizes, target], dim=1).to(device=device, dtype=dtype)
