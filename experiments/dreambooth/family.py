"""DreamBooth (subject-driven generation, the paper's SDXL experiment) with the methods on the UNet.

One run fine-tunes the UNet on one subject (`data.task`, a folder of the DreamBooth dataset) with the instance
prompt "a photo of <token> <class>" and the noise-prediction loss (optionally with prior preservation on class
images the base model draws), through the shared loop. The method wraps the UNet only: the VAE, both text
encoders, the tokenizers and the schedulers are frozen and live in the run (`models.Frozen`).

Test: the trained adapter is saved and loaded back as a user would (`Method.save_adapter` / `load_adapter`, i.e.
`loradash.from_pretrained` for LoRA-Dash), then stock diffusers `StableDiffusionXLPipeline` draws N images
with fixed seeds for each of the subject's 25 DreamBooth prompts; DINO, CLIP-I and CLIP-T score each image
(metrics.py), and drift compares the adapted and base models on unrelated prompts. DreamBooth has no held-out
split: `val_loss` is the denoising loss on the instance images at fixed noise and timesteps (a fit measure),
and the paper protocol validates once, at the end, so the final checkpoint is scored.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from experiments.dreambooth import data as db
from experiments.dreambooth import metrics as mx
from experiments.dreambooth.generation import generate, image_grid, save_png, unet_of
from experiments.dreambooth.models import (
    SDXL,
    Frozen,
    add_time_ids,
    build_frozen,
    build_unet,
    check_model_name,
    encode_prompts,
    is_tiny,
    tiny_tokenizer,
)
from experiments.harness.config import ExperimentConfig, check_positive
from experiments.harness.datadir import resolve_data_dir
from experiments.harness.records import REPO_ROOT, file_sha256
from experiments.harness.registry import Family, Metric, register_family

# Unrelated prompts for drift: scenes without the subject's class, the same for every subject.
DRIFT_PROMPTS = (
    "a photo of a red sports car on a mountain road",
    "a watercolor painting of a lighthouse at sunset",
    "a bowl of fresh fruit on a kitchen table",
    "a city skyline at night with reflections on the river",
)


@dataclass(frozen=True)
class DreamBoothData:
    task: str = "dog"  # the subject: a folder of <data_dir>/dataset (set per run by the profile's `tasks`)
    data_dir: str | None = None  # None: LORADASH_DREAMBOOTH_DIR, else ../shared/data/dreambooth
    instance_token: str = "sks"  # the rare identifier (as the DreamBooth and diffusers SDXL scripts)
    class_name: str | None = None  # None: the subject's class in prompts_and_classes.txt
    instance_prompt: str = "a photo of {token} {cls}"
    resolution: int = 1024
    center_crop: bool = True
    vae: str | None = None  # a VAE replacing the model's (the paper: madebyollin/sdxl-vae-fp16-fix)
    prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    num_class_images: int = 100  # drawn by the base model with `class_prompt`, seeds 0..n-1
    class_prompt: str = "a photo of {cls}"
    val_draws: int = 8  # (image, timestep, noise) draws of `val_loss`, fixed by val_seed
    val_seed: int = 0


@dataclass(frozen=True)
class DreamBoothEval:
    images_per_prompt: int = 4  # N images per prompt, seeds image_seed .. image_seed + N - 1
    image_seed: int = 0
    max_prompts: int | None = None  # None: all 25 prompts of the subject's list (fewer only for tests)
    num_inference_steps: int = 50
    guidance_scale: float = 5.0  # StableDiffusionXLPipeline's default
    generation_batch_size: int = 4
    drift_prompts: tuple[str, ...] = DRIFT_PROMPTS
    dino_model: str = mx.DINO_HUB  # or tiny:vit (random, tests)
    clip_model: str = mx.CLIP_HUB  # or tiny:clip (random, tests)
    image_dir: str | None = None  # where the PNG grids go (relative: to the repository); None: none written


def _resolve(path: str | None) -> Path:
    return resolve_data_dir(path, db.default_data_dir)


def _fill(template: str, token: str | None, cls: str) -> str:
    return template.format(token=token, cls=cls)


@register_family
class DreamBoothRun(Family):
    """One subject: the UNet fine-tuned on its images, then images generated, scored and compared."""

    name = "dreambooth"
    description = "DreamBooth subject-driven generation (the paper's SDXL experiment): DINO / CLIP-I / CLIP-T"
    protocol_version = "dreambooth-sdxl-v1"
    data_config = DreamBoothData
    eval_config = DreamBoothEval
    metrics: ClassVar[Mapping[str, Metric]] = {
        "dino": Metric("dino", True, "subject fidelity: mean DINO ViT-S/16 cosine to the real images"),
        "clip_i": Metric(
            "clip_i", True, "subject fidelity: mean CLIP ViT-B/32 image cosine to the real images"
        ),
        "clip_t": Metric(
            "clip_t", True, "prompt fidelity: CLIP ViT-B/32 image-text cosine (identifier removed)"
        ),
        "drift": Metric("drift", False, "1 - DINO cosine to the base model's image on unrelated prompts"),
    }
    mean_item_field = "dino"  # per-item values whose mean is the primary metric
    primary_metric = "dino"
    validation_metrics: ClassVar[Mapping[str, Metric]] = {
        "val_loss": Metric(
            "val_loss", False, "denoising loss on the instance images at fixed noise/timesteps"
        ),
    }
    one_task_per_run = True
    score_unit = "points"
    paper_model = "SDXL base 1.0"

    # -- declarations -----------------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> list[tuple[str, str]]:
        d, e = cfg.data, cfg.eval
        problems = check_positive({
            "data.resolution": d.resolution, "data.num_class_images": d.num_class_images,
            "data.val_draws": d.val_draws, "eval.images_per_prompt": e.images_per_prompt,
            "eval.num_inference_steps": e.num_inference_steps, "eval.generation_batch_size": e.generation_batch_size,
        })  # fmt: skip
        problems += check_positive({"eval.max_prompts": e.max_prompts}, allow_none=True)
        if d.resolution % 8:
            problems.append(
                ("data.resolution", f"must be a multiple of 8 (the VAE's downsampling), got {d.resolution}")
            )
        if problem := check_model_name(cfg.model.name):
            problems.append(("model.name", problem))
        for key, name in (("eval.dino_model", e.dino_model), ("eval.clip_model", e.clip_model)):
            if name.startswith("tiny:") and name not in ("tiny:vit", "tiny:clip"):
                problems.append((key, f"unknown tiny model {name!r} (known: tiny:vit, tiny:clip)"))
        if not d.instance_token.strip() or " " in d.instance_token:
            problems.append(("data.instance_token", f"must be one word, got {d.instance_token!r}"))
        for key, template in (
            ("data.instance_prompt", d.instance_prompt),
            ("data.class_prompt", d.class_prompt),
        ):
            if "{cls}" not in template:
                problems.append((key, f"must contain {{cls}}, got {template!r}"))
        if "{token}" in d.class_prompt:
            problems.append(
                ("data.class_prompt", f"is the class prior: it takes no {{token}}, got {d.class_prompt!r}")
            )
        if d.prior_loss_weight < 0:
            problems.append(("data.prior_loss_weight", f"must be >= 0, got {d.prior_loss_weight}"))
        return problems

    @classmethod
    def check_data(cls, cfg: ExperimentConfig) -> None:
        d = cfg.data
        root = _resolve(d.data_dir)
        spec = db.read_prompts(root / db.PROMPTS_FILE)
        if d.class_name is None and d.task not in spec.classes:
            raise ValueError(
                f"{root / db.PROMPTS_FILE}: subject {d.task!r} has no class row (set data.class_name)"
            )
        db.instance_files(root, d.task)

    @classmethod
    def write_artifacts(cls, records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        """Methods side by side: for each subject, seed and learning rate, the runs' grids (rows: prompts)
        next to each other under their experiment's name -> grids/<subject>_seed<S>_lr<LR>.png. A run of a
        model with random weights is labelled so (a check of the code: its pictures show nothing)."""
        from experiments.dreambooth.generation import side_by_side
        from experiments.harness.records import lr_tag

        groups: dict[tuple[str, int, str], dict[str, Path]] = {}
        for rec in sorted(records, key=lambda r: (r.get("task") or "", r["seed"], r["lr"], r["experiment"])):
            for subject, task in (rec.get("test") or {}).get("per_task", {}).items():
                grid = Path(task.get("grid") or "")
                grid = grid if grid.is_absolute() else REPO_ROOT / grid
                if not task.get("grid") or not grid.is_file():
                    continue  # images not kept (e.g. a fresh clone of committed records)
                label = rec["experiment"]
                if rec.get("identity", {}).get("model", {}).get("random_weights"):
                    label += " (random weights)"
                groups.setdefault((subject, rec["seed"], lr_tag(rec["lr"])), {})[label] = grid
        return [side_by_side(grids, out_dir / "grids" / f"{subject}_seed{seed}_lr{lr}.png")
                for (subject, seed, lr), grids in groups.items()]  # fmt: skip

    # -- one run -----------------------------------------------------------------------------------------------
    def __init__(self, cfg: ExperimentConfig, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        d = cfg.data
        self.subject = d.task
        self.data_dir = _resolve(d.data_dir)
        self.prompts_file = self.data_dir / db.PROMPTS_FILE
        self.spec = db.read_prompts(self.prompts_file)
        self.class_name = d.class_name or self.spec.classes[d.task]
        self.instance_prompt = _fill(d.instance_prompt, d.instance_token, self.class_name)
        self.files = db.instance_files(self.data_dir, d.task)
        self.images = [db.load_image(p) for p in self.files]  # full size: the metrics' references
        pairs = [db.to_training_tensor(im, d.resolution, center_crop=d.center_crop) for im in self.images]
        self.pixels = torch.stack([p for p, _ in pairs])  # [n, 3, R, R] in [-1, 1]
        self.sizes = torch.stack([s for _, s in pairs])  # [n, 4]: original (h, w), crop (top, left)
        self.dtype = getattr(torch, cfg.model.dtype)
        self._frozen: Frozen | None = None
        self._frozen_device: Any = None
        self._embeds: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.class_pixels: torch.Tensor | None = None
        self.class_sizes: torch.Tensor | None = None
        self._encoders: tuple[mx.DinoEncoder, mx.ClipEncoder] | None = None
        self._grid: Any = None  # the last evaluate_test's image grid (PIL), for the trackers

    @property
    def num_train(self) -> int:
        return len(self.files)

    def frozen(self, device: Any) -> Frozen:
        """The frozen components, built on first use (preflight builds the run without them) and moved to
        `device`."""
        if self._frozen is None:
            self._frozen = build_frozen(self.cfg.model.name, vae=self.cfg.data.vae, dtype=self.dtype)
        if self._frozen_device != str(device):
            self._frozen.to(device)
            self._frozen_device = str(device)
        return self._frozen

    def _prompt_embeds(self, prompt: str, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        key = (prompt, str(device))
        if key not in self._embeds:
            self._embeds[key] = encode_prompts(self.frozen(device), [prompt], device)
        return self._embeds[key]

    def build_model(self) -> torch.nn.Module:
        return build_unet(self.cfg.model.name, dtype=self.dtype)

    def enable_gradient_checkpointing(self, model: torch.nn.Module) -> None:
        # diffusers' own switch (non-reentrant torch.utils.checkpoint per UNet block, as its DreamBooth scripts'
        # --gradient_checkpointing); the noisy latents carry no grad, which non-reentrant checkpointing allows
        model.enable_gradient_checkpointing()  # type: ignore[operator]

    # -- training ----------------------------------------------------------------------------------------------
    def _class_images(self) -> None:
        """Prior preservation: `num_class_images` images of the class prompt drawn once by the base model."""
        d, e = self.cfg.data, self.cfg.eval
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        prompt = _fill(d.class_prompt, None, self.class_name)
        base = self.build_model().to(device)
        images = generate(self.frozen(device), base, [(prompt, s) for s in range(d.num_class_images)],
                          resolution=d.resolution, num_inference_steps=e.num_inference_steps,
                          guidance_scale=e.guidance_scale, batch_size=e.generation_batch_size, device=device)  # fmt: skip
        del base
        pairs = [db.to_training_tensor(im, d.resolution, center_crop=d.center_crop) for im in images]
        self.class_pixels = torch.stack([p for p, _ in pairs])
        self.class_sizes = torch.stack([s for _, s in pairs])

    def train_loader(self, seed: int, micro_batch_size: int) -> DataLoader:
        """Shuffled instance images (each epoch a permutation, repeated when a micro-batch is larger than the
        set); with prior preservation each item also carries a class image, and an epoch is as long as the
        longer of the two sets (the diffusers DreamBooth scripts)."""
        n = len(self.files)
        length = n
        if self.cfg.data.prior_preservation:
            if self.class_pixels is None:
                self._class_images()
            length = max(n, self.cfg.data.num_class_images)
        length = max(length, micro_batch_size)
        return DataLoader(
            list(range(length)),  # type: ignore[arg-type]
            batch_size=micro_batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=self._collate,
        )

    def _collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        n = len(self.files)
        inst = [i % n for i in idx]
        batch = {"pixels": self.pixels[inst], "sizes": self.sizes[inst]}
        if self.cfg.data.prior_preservation:
            assert self.class_pixels is not None and self.class_sizes is not None
            cls = [i % len(self.class_pixels) for i in idx]
            batch |= {"class_pixels": self.class_pixels[cls], "class_sizes": self.class_sizes[cls]}
        return batch

    @staticmethod
    def batch_size_of(batch: Any) -> int:
        """Examples of a batch: instance images plus class images."""
        return int(batch["pixels"].shape[0]) + (
            int(batch["class_pixels"].shape[0]) if "class_pixels" in batch else 0
        )

    def _denoise_loss(self, model: torch.nn.Module, pixels: torch.Tensor, sizes: torch.Tensor,
                      prompts: list[str], *, generator: torch.Generator | None = None,
                      sample_latents: bool = True) -> torch.Tensor:  # fmt: skip
        """Per-image noise-prediction MSE [b] (the SDXL DreamBooth script's loss): encode to latents, add noise at
        a random timestep, predict the noise (or the velocity, by the scheduler's prediction type)."""
        device = pixels.device
        parts = self.frozen(device)
        unet = unet_of(model)
        with torch.no_grad():
            dist = parts.vae.encode(pixels.to(parts.vae.dtype)).latent_dist
            latents = dist.sample(generator) if sample_latents else dist.mean
            latents = latents * parts.vae.config.scaling_factor  # [b, 4, R/8, R/8] for SDXL
        b = latents.shape[0]
        sched = parts.noise_scheduler
        noise = torch.randn(latents.shape, generator=generator, device="cpu").to(device, latents.dtype)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator).to(device)
        noisy = sched.add_noise(latents, noise, t)
        embeds = [self._prompt_embeds(p, device) for p in prompts]
        states = torch.cat([e for e, _ in embeds]).to(unet.dtype)  # [b, 77, d1 + d2]
        pooled = torch.cat([p for _, p in embeds]).to(unet.dtype)  # [b, d_proj]
        time_ids = add_time_ids(sizes, self.cfg.data.resolution, device, unet.dtype)
        pred = model(noisy.to(unet.dtype), t, encoder_hidden_states=states,
                     added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample  # fmt: skip
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
        return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels, sizes = batch["pixels"], batch["sizes"]
        b = pixels.shape[0]
        if "class_pixels" not in batch:
            return self._denoise_loss(model, pixels, sizes, [self.instance_prompt] * b).mean()
        class_prompt = _fill(self.cfg.data.class_prompt, None, self.class_name)
        per = self._denoise_loss(model, torch.cat([pixels, batch["class_pixels"]]),
                                 torch.cat([sizes, batch["class_sizes"]]),
                                 [self.instance_prompt] * b + [class_prompt] * b)  # fmt: skip
        return per[:b].mean() + self.cfg.data.prior_loss_weight * per[b:].mean()

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, device: Any) -> dict[str, float]:
        was_training = model.training
        model.eval()
        d = self.cfg.data
        g = torch.Generator().manual_seed(d.val_seed)
        idx = [k % len(self.files) for k in range(d.val_draws)]
        losses = []
        for i in idx:  # one draw at a time: its noise and timestep do not depend on a batch size
            px, sz = self.pixels[i : i + 1].to(device), self.sizes[i : i + 1]
            losses.append(
                self._denoise_loss(model, px, sz, [self.instance_prompt], generator=g, sample_latents=False)
            )
        model.train(was_training)
        return {"val_loss": float(torch.cat(losses).mean())}

    # -- test --------------------------------------------------------------------------------------------------
    def eval_prompts(self) -> list[str]:
        prompts = db.evaluation_prompts(self.spec, self.class_name, self.cfg.data.instance_token)
        return prompts[: self.cfg.eval.max_prompts] if self.cfg.eval.max_prompts else prompts

    def eval_jobs(self) -> list[tuple[str, int]]:
        e = self.cfg.eval
        return [(p, e.image_seed + k) for p in self.eval_prompts() for k in range(e.images_per_prompt)]

    def drift_jobs(self) -> list[tuple[str, int]]:
        return [(p, self.cfg.eval.image_seed) for p in self.cfg.eval.drift_prompts]

    def draw(self, unet: torch.nn.Module, jobs: list[tuple[str, int]], device: Any) -> list[Any]:
        e = self.cfg.eval
        return generate(self.frozen(device), unet, jobs, resolution=self.cfg.data.resolution,
                        num_inference_steps=e.num_inference_steps, guidance_scale=e.guidance_scale,
                        batch_size=e.generation_batch_size, device=device)  # fmt: skip

    def reload(
        self, model: torch.nn.Module, device: Any, base: torch.nn.Module | None = None
    ) -> torch.nn.Module:
        """The trained model as a user gets it: saved by the method, loaded onto a fresh base UNet."""
        from accelerate.utils import extract_model_from_parallel

        from baselines import build_method

        method = build_method(self.cfg.method.name, **self.cfg.method.params)
        with tempfile.TemporaryDirectory(prefix="dreambooth-adapter-") as tmp:
            method.save_adapter(extract_model_from_parallel(model), tmp)
            base = self.build_model() if base is None else base
            loaded = method.load_adapter(base, tmp)
        return loaded.to(device).eval()

    def encoders(self, device: Any) -> tuple[mx.DinoEncoder, mx.ClipEncoder]:
        """The metric models (eval.dino_model, eval.clip_model), loaded once per run."""
        if self._encoders is None:
            e = self.cfg.eval
            tok = tiny_tokenizer() if e.clip_model == "tiny:clip" else None
            self._encoders = (
                mx.DinoEncoder(e.dino_model, device),
                mx.ClipEncoder(e.clip_model, device, tiny_tokenizer=tok),
            )
        return self._encoders

    def score(self, images: list[Any], jobs: list[tuple[str, int]], device: Any) -> dict[str, np.ndarray]:
        """Per-image DINO, CLIP-I and CLIP-T (metrics.py)."""
        dino, clip = self.encoders(device)
        token = self.cfg.data.instance_token
        clip_img = clip.embed_images(images)
        texts = [db.without_token(p, token) for p, _ in jobs]
        return {
            "dino": mx.similarity_to_references(dino.embed(images), dino.embed(self.images)),
            "clip_i": mx.similarity_to_references(clip_img, clip.embed_images(self.images)),
            "clip_t": mx.paired_cosine(clip_img, clip.embed_texts(texts)),
        }

    def real_image_reference(self, device: Any) -> dict[str, float | None]:
        """DreamBooth Table 1's "Real Images" row for this subject: the mean similarity of each real image to the
        others (the ceiling the subject-fidelity metrics can reach with these metric models)."""
        dino, clip = self.encoders(device)
        return {"dino": mx.leave_one_out_similarity(dino.embed(self.images)),
                "clip_i": mx.leave_one_out_similarity(clip.embed_images(self.images))}  # fmt: skip

    def drift(self, base_images: list[Any], images: list[Any], device: Any) -> np.ndarray:
        dino, _ = self.encoders(device)
        return 1.0 - mx.paired_cosine(dino.embed(images), dino.embed(base_images))

    def evaluate_test(self, model: torch.nn.Module, device: Any) -> dict[str, Any]:
        e = self.cfg.eval
        jobs, drift_jobs = self.eval_jobs(), self.drift_jobs()
        base = self.build_model().to(device)
        base_drift = self.draw(base, drift_jobs, device)  # before loading: peft injects into `base`
        loaded = self.reload(model, device, base=base)
        del base  # full fine-tuning loads a new UNet: the base copy can go
        unet = unet_of(loaded)
        images = self.draw(unet, jobs, device)
        drift_images = self.draw(unet, drift_jobs, device)
        scores = self.score(images, jobs, device)
        drift = self.drift(base_drift, drift_images, device)
        labels = [p for p, _ in jobs[:: e.images_per_prompt]]
        # rows: prompts, columns: seeds
        self._grid = image_grid(images, cols=e.images_per_prompt, labels=labels, reference=list(self.images),
                                reference_label=f"real images of the subject ({self.subject})")  # fmt: skip
        grid = self.write_grid(self._grid) if e.image_dir is not None else None
        ids = [f"p{i // e.images_per_prompt:02d}_seed{s}" for i, (_, s) in enumerate(jobs)]
        per_task = {
            "n": len(jobs),
            **{k: float(v.mean()) for k, v in scores.items()},
            "drift": float(drift.mean()),
            "prompts": self.eval_prompts(),
            "items": {"ids": ids, **{k: v.tolist() for k, v in scores.items()}},
            "drift_items": {
                "ids": [f"d{i:02d}_seed{s}" for i, (_, s) in enumerate(drift_jobs)],
                "prompts": [p for p, _ in drift_jobs],
                "drift": drift.tolist(),
            },  # fmt: skip
            "real_images": self.real_image_reference(device),
            "grid": grid,
        }
        return {
            "protocol": (
                f"DreamBooth: {len(self.eval_prompts())} prompts x {e.images_per_prompt} seeds, "
                f"{e.num_inference_steps} steps, guidance {e.guidance_scale}, adapter saved and reloaded; "
                f"DINO {e.dino_model}, CLIP {e.clip_model}"
            ),
            "per_task": {self.subject: per_task},
            "missing_tasks": [],
        }

    def write_grid(self, grid: Any) -> str:
        """The grid (rows: prompts, columns: seeds) -> <image_dir>/<experiment>/<subject>/seed<S>_lr<LR>.png"""
        from experiments.harness.records import lr_tag

        root = Path(self.cfg.eval.image_dir or ".")
        root = root if root.is_absolute() else REPO_ROOT / root
        path = root / self.cfg.name / self.subject / f"seed{self.seed}_lr{lr_tag(self.cfg.train.lr)}.png"
        save_png(grid, path)
        return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)

    def tracked_images(self) -> dict[str, Any]:
        """The generated images of the last test, as the grid the record names (`test/<subject>/grid`)."""
        return {} if self._grid is None else {f"{self.subject}/grid": self._grid}

    def identity(self) -> dict[str, Any]:
        m, e = self.cfg.model, self.cfg.eval
        tiny = is_tiny(m.name)
        random_metrics = e.dino_model.startswith("tiny:") or e.clip_model.startswith("tiny:")
        return {
            "model": {
                "name": m.name,
                "vae": self.cfg.data.vae,
                # true: some model of this run (diffusion or metric) has random weights; its numbers measure
                # nothing and never enter a results table as findings
                "random_weights": tiny or random_metrics,
                "random_diffusion_model": tiny,
                "metric_models": {
                    "dino": e.dino_model,
                    "clip": e.clip_model,
                    "random_weights": random_metrics,
                },
                "paper_model": m.name == SDXL,
            },
            "data": {
                "task": self.subject,
                "class": self.class_name,
                "instance_prompt": self.instance_prompt,
                "files": {
                    f"{p.parent.name}/{p.name}": file_sha256(p) for p in [*self.files, self.prompts_file]
                },
                "n_train": len(self.files),
                "n_test": {self.subject: len(self.eval_jobs())},
            },
        }
