"""Planted task-specific directions (issue 16): a task whose right answer is known.

The teacher is the base model with a known rank-k update along k of each targeted matrix's own singular
directions (teacher.py: the paper's "small but not the smallest sigma" band, uniformly random positions, or, as
the control, random directions that are not singular directions of W), sized so that the teacher's sentence
embeddings move by a stated cosine distance. Students start from the base model and learn to match the teacher's
last-layer hidden state of every token (MSE, in units of the base model's distance to the teacher) on real SST-2
sentences (text only; labels unused). Token states rather than the pooled embedding alone: 384 x T targets per
sentence instead of 384, so a CPU-sized run can identify an update spread over 24 matrices.

Scores, on held-out sentences (SST-2 dev; validation carved out of train):
- `matched` (primary): 1 - sum |s - t|^2 / sum |b - t|^2 over the tokens of the test sentences (s, t, b: the
  student's, teacher's and base model's last-layer states), the fraction of the teacher's planted change the
  student reproduces (0: the base model, 1: the teacher; negative: further than the base); per-item arrays keep
  each sentence's sums, so the statistics resample sentences;
- `distance`: mean |s - t|^2 per token, the raw student-teacher distance (`base_distance`: the base model's);
- `recovery` (LoRA-Dash students of the singular-direction settings): the fraction of the planted positions S
  among the directions each layer chose, averaged over matrices (per matrix in `recovery_by_layer`); chance for
  s directions drawn from n is s / n (`recovery_chance`).
One run trains on one teacher; the setting is a data field, so an experiment folder fixes method and teacher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from experiments.commonsense.family import resolve_model
from experiments.glue.data import default_data_dir, load_tsv, task_file
from experiments.harness.config import ExperimentConfig, check_positive
from experiments.harness.records import REPO_ROOT, file_sha256, model_identity
from experiments.harness.registry import Family, Metric, register_family, shuffled_loader
from experiments.planted import teacher as T

CACHE_ENV = "LORADASH_PLANTED_CACHE"
CACHE_FORMAT = "planted-teacher-2"  # bump when what the cache holds changes
TASK = "planted"  # the one task of every run: match the teacher on held-out sentences


@dataclass(frozen=True)
class PlantedData:
    task: str = "planted"  # the one task: match the teacher on held-out sentences (the teacher is `setting`)
    setting: Literal["band", "anywhere", "random_dirs"] = "band"
    num_planted: int = 8  # k: planted directions per targeted matrix
    band: tuple[float, float] = (0.6, 0.9)  # spectrum ranks (fractions of n) of the "band" setting
    target_change: float = 0.1  # mean cosine distance between teacher and base embeddings (calibrated)
    calibration_examples: int = 128  # training sentences the calibration measures the change on
    teacher_seed: int = 0  # the teacher's draws; fixed across run seeds (runs differ in init and data order)
    data_dir: str | None = None  # None: LORADASH_GLUE_DIR, else ../shared/data/glue (SST-2 text)
    max_seq_len: int = 64
    train_examples: int = 2000
    val_examples: int = 200
    test_examples: int | None = 500  # a fixed subset of the SST-2 dev sentences; None = all 872
    split_seed: int = 42


def _resolve_dir(data_dir: str | None) -> Path:
    if data_dir is None:
        return default_data_dir()
    p = Path(data_dir)
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


def load_sentences(d: PlantedData) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[tuple[int, str]], list[Path]]:  # fmt: skip
    """(train, validation, test, files): (row id, sentence) pairs. Train and validation are disjoint draws from
    SST-2 train (distinct sentences), test a fixed draw from SST-2 dev."""
    data_dir = _resolve_dir(d.data_dir)
    files = [task_file("sst2", "train", data_dir), task_file("sst2", "test", data_dir)]
    seen: set[str] = set()
    pool = []
    for e in load_tsv("sst2", files[0]):
        if e.texts[0] not in seen:
            seen.add(e.texts[0])
            pool.append((e.id, e.texts[0]))
    need = d.train_examples + d.val_examples
    if len(pool) < need:
        raise ValueError(f"SST-2 train has {len(pool)} distinct sentences, fewer than train + val = {need}")
    order = random.Random(d.split_seed).sample(range(len(pool)), need)
    val = [pool[i] for i in sorted(order[: d.val_examples])]
    train = [pool[i] for i in sorted(order[d.val_examples :])]
    test = [(e.id, e.texts[0]) for e in load_tsv("sst2", files[1])]
    if d.test_examples is not None and d.test_examples < len(test):
        test = [
            test[i]
            for i in sorted(random.Random(f"{d.split_seed}-test").sample(range(len(test)), d.test_examples))
        ]
    return train, val, test, files


def hidden_states(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The last layer's hidden states, [batch, tokens, hidden] (fp32)."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return model(**inputs).last_hidden_state.float()


@dataclass(frozen=True)
class TokenStates:
    """The hidden states of a list of sentences, flat: `flat[offsets[i] : offsets[i + 1]]` is sentence i's [T_i,
    hidden]."""

    flat: torch.Tensor  # [sum T_i, hidden]
    offsets: torch.Tensor  # [n + 1]

    def of(self, i: int) -> torch.Tensor:
        return self.flat[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def pooled(self) -> torch.Tensor:
        """Unit-norm mean-pooled states (all-MiniLM-L6-v2's sentence embedding), [n, hidden]."""
        sums = torch.stack([self.of(i).mean(0) for i in range(len(self.offsets) - 1)])
        return torch.nn.functional.normalize(sums, dim=-1)

    def distances(self, other: TokenStates) -> np.ndarray:
        """Per sentence, the sum over its tokens of the squared distance of the two states, [n]."""
        sq = (self.flat - other.flat).pow(2).sum(-1)  # [sum T_i]
        return torch.segment_reduce(sq, "sum", lengths=self.offsets.diff()).numpy()


@register_family
class PlantedRun(Family):
    """Match a teacher whose update along known directions was planted into the base model."""

    name = "planted"
    description = "planted task-specific directions: match a teacher with a known rank-k update"
    protocol_version = "planted-v1"
    data_config = PlantedData
    metrics: ClassVar[Mapping[str, Metric]] = {
        "matched": Metric("matched", True, "fraction of the teacher's planted change reproduced on test sentences"),
        "distance": Metric("distance", False, "mean squared distance of student and teacher token states"),
        "recovery": Metric("recovery", True, "fraction of the planted directions among those LoRA-Dash chose"),
    }  # fmt: skip
    primary_metric = "matched"
    # token states of the teacher and the base model, set by the constructor (cached on disk)
    teacher_train: TokenStates
    teacher_val: TokenStates
    teacher_test: TokenStates
    base_val: TokenStates
    base_test: TokenStates
    validation_metrics: ClassVar[Mapping[str, Metric]] = {
        "val_loss": Metric("val_loss", False),
        "val_matched": Metric("val_matched", True),
    }
    one_task_per_run = True  # one task, so that a run's path and plan read as every single-task family's
    chance: ClassVar[Mapping[str, float]] = {TASK: 0.0}  # the base model itself

    @classmethod
    def task_score(cls, task: str, items: Mapping[str, np.ndarray]) -> float:
        return float(1 - np.sum(items["distance"]) / np.sum(items["base_distance"]))

    @classmethod
    def task_scores(cls, task: str, items: Mapping[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
        d, d0 = np.asarray(items["distance"], float), np.asarray(items["base_distance"], float)
        return 1 - d[idx].sum(axis=1) / d0[idx].sum(axis=1)

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> list[tuple[str, str]]:
        d = cfg.data
        problems = check_positive({"data.num_planted": d.num_planted, "data.max_seq_len": d.max_seq_len, "data.train_examples": d.train_examples,
                                   "data.val_examples": d.val_examples,
                                   "data.calibration_examples": d.calibration_examples})  # fmt: skip
        problems += check_positive({"data.test_examples": d.test_examples}, allow_none=True)
        if d.task != TASK:
            problems.append(("data.task", f"the planted family has one task, {TASK!r}; got {d.task!r}"))
        if not 0 < d.target_change < 1:
            problems.append(
                ("data.target_change", f"must be a cosine distance in (0, 1), got {d.target_change}")
            )
        if d.setting not in T.SETTINGS:
            problems.append(
                ("data.setting", f"unknown planted setting {d.setting!r} (known: {', '.join(T.SETTINGS)})")
            )
        if len(d.band) != 2 or not 0 <= d.band[0] < d.band[1] <= 1:
            problems.append(("data.band", f"must be two fractions 0 <= low < high <= 1, got {d.band!r}"))
        if d.calibration_examples > d.train_examples:
            problems.append(("data.calibration_examples", "must be <= data.train_examples"))
        return problems

    @classmethod
    def check_data(cls, cfg: ExperimentConfig) -> None:
        load_sentences(cfg.data)

    @classmethod
    def write_artifacts(cls, records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        from experiments.planted import plots

        return plots.write(records, out_dir)

    def __init__(self, cfg: ExperimentConfig, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        d = cfg.data
        self.train, self.val, self.test, self.data_files = load_sentences(d)
        self.model_path = resolve_model(cfg.model.name)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or self.model_path)
        self._teacher_info: dict[str, Any] = {}
        self._build_teacher()

    # -- the teacher -----------------------------------------------------------------------------------------
    def _encode(self, sentences: list[tuple[int, str]]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer([s for _, s in sentences], padding=True, truncation=True,
                                   max_length=self.cfg.data.max_seq_len, return_tensors="pt"))  # fmt: skip

    @torch.no_grad()
    def _states(
        self, model: torch.nn.Module, sentences: list[tuple[int, str]], device: Any = "cpu"
    ) -> TokenStates:
        was_training = model.training
        model.eval()
        bs = self.cfg.train.eval_batch_size
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i][1]))  # little padding per batch
        per: list[torch.Tensor | None] = [None] * len(sentences)
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            batch = {k: v.to(device) for k, v in self._encode([sentences[i] for i in idx]).items()}
            h = hidden_states(model, batch).cpu()  # [b, L, hidden]
            for row, i in enumerate(idx):
                per[i] = h[row, : int(batch["attention_mask"][row].sum())]
        model.train(was_training)
        lengths = torch.tensor([0] + [t.shape[0] for t in per])  # type: ignore[union-attr]
        return TokenStates(torch.cat(per), lengths.cumsum(0))  # type: ignore[arg-type]

    def _load_base(self) -> torch.nn.Module:
        from transformers import AutoModel

        from experiments.harness.loading import load_pretrained

        return load_pretrained(AutoModel, self.model_path, dtype=getattr(torch, self.cfg.model.dtype),
                               add_pooling_layer=False)  # fmt: skip

    def _teacher_key(self) -> str:
        """What the teacher and its embeddings are a function of: model weights, data files, the data section, the
        targets, the dtype and the eval batch size (the embeddings are computed in batches of it)."""
        ident = {"model": model_identity(self.cfg.model.name, self.model_path)["weights_sha256"],
                 "files": [file_sha256(p) for p in self.data_files], "data": dataclasses.asdict(self.cfg.data),
                 "targets": list(self.cfg.model.target_modules), "dtype": self.cfg.model.dtype,
                 "eval_batch_size": self.cfg.train.eval_batch_size, "format": CACHE_FORMAT}  # fmt: skip
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def _build_teacher(self) -> None:
        """Teacher embeddings of every sentence and base embeddings of the held-out ones (fixed for the run).
        The embeddings and the calibration are kept in a cache folder ($LORADASH_PLANTED_CACHE, default
        ~/.cache/loradash/planted) keyed by everything they depend on: every run of a teacher reuses them."""
        d = self.cfg.data
        model = self._load_base()
        self.planted = T.plan_matrices(model, list(self.cfg.model.target_modules), setting=d.setting,
                                       k=d.num_planted, band=d.band, seed=d.teacher_seed)  # fmt: skip
        cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "loradash" / "planted")
        key = self._teacher_key()
        path = cache / f"{key}.safetensors"
        names = ("teacher_train", "teacher_val", "teacher_test", "base_val", "base_test")
        cal: dict[str, Any] | None = None
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    states = {n: TokenStates(f.get_tensor(n), f.get_tensor(f"{n}.offsets")) for n in names}
                    cal = json.loads(f.metadata()["calibration"])
            except Exception:  # a truncated or foreign file: recompute and overwrite it
                cal = None
        if cal is None:
            calib = self.train[: d.calibration_examples]
            base_calib = self._states(model, calib).pooled()
            states = {"base_val": self._states(model, self.val), "base_test": self._states(model, self.test)}
            embed = lambda m: self._states(m, calib).pooled()  # noqa: E731
            cal = T.calibrate(model, self.planted, embed, base_calib, target_change=d.target_change)
            states |= {
                f"teacher_{split}": self._states(model, getattr(self, split))
                for split in ("train", "val", "test")
            }
            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tensors = {
                k: v for n, st in states.items() for k, v in ((n, st.flat), (f"{n}.offsets", st.offsets))
            }
            save_file(tensors, str(tmp), metadata={"calibration": json.dumps(cal)})
            os.replace(tmp, path)
        for n in names:
            setattr(self, n, states[n])
        # the loss is divided by the base model's mean token distance to the teacher (validation): it starts near 1
        self.loss_scale = float(self.base_val.distances(self.teacher_val).sum() / self.base_val.flat.shape[0])
        held_out = float((1 - (self.teacher_test.pooled() * self.base_test.pooled()).sum(-1)).mean())
        self._teacher_info = {
            "setting": d.setting,
            "num_planted": d.num_planted,
            "scale_c": cal["scale"],
            "calibration": cal,
            "cosine_distance_calibration": cal["cosine_distance"],
            "cosine_distance_test": held_out,  # the teacher's measured move on the held-out sentences
            # ... and of the token states it is trained on: mean |teacher - base|^2 / mean |base|^2 per token
            "token_relative_change_test": float(self.base_test.distances(self.teacher_test).sum()
                                                / self.base_test.flat.pow(2).sum()),
            "matrices": len(self.planted),
            "cache_key": key,
            "positions": {p.name: list(p.positions) for p in self.planted},
            "magnitudes": {p.name: [round(float(m) * cal["scale"], 6) for m in p.magnitudes] for p in self.planted},
        }  # fmt: skip
        del model

    # -- one run ----------------------------------------------------------------------------------------------
    @property
    def num_train(self) -> int:
        return len(self.train)

    def build_model(self) -> torch.nn.Module:
        return self._load_base()

    def _collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        batch = self._encode([self.train[i] for i in rows])
        targets = torch.zeros(*batch["input_ids"].shape, self.teacher_train.flat.shape[1])  # [b, L, hidden]
        for row, i in enumerate(rows):
            t = self.teacher_train.of(i)
            targets[row, : t.shape[0]] = t
        batch["labels"] = targets  # the teacher's states; padding positions are masked out of the loss
        return batch

    def train_loader(self, seed: int, micro_batch_size: int) -> DataLoader:
        return shuffled_loader(list(range(len(self.train))), micro_batch_size, seed, self._collate)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over real tokens of |student state - teacher state|^2, in units of the base model's distance."""
        mask = batch["attention_mask"].float()  # [b, L]
        sq = (hidden_states(model, batch) - batch["labels"]).pow(2).sum(-1)  # [b, L]
        return (sq * mask).sum() / mask.sum() / self.loss_scale

    def validate(self, model: torch.nn.Module, device: Any) -> dict[str, float]:
        d = self._states(model, self.val, device).distances(self.teacher_val)
        d0 = self.base_val.distances(self.teacher_val)
        return {"val_loss": float(d.sum() / self.base_val.flat.shape[0] / self.loss_scale),
                "val_matched": float(1 - d.sum() / d0.sum())}  # fmt: skip

    def _chosen_directions(self, model: torch.nn.Module) -> dict[str, list[int]]:
        import loradash

        return {name: d["indices"] for name, d in loradash.dash_diagnostics(model).items() if d["launched"]}

    def evaluate_test(self, model: torch.nn.Module, device: Any) -> dict[str, Any]:
        student = self._states(model, self.test, device)
        d, d0 = student.distances(self.teacher_test), self.base_test.distances(self.teacher_test)
        tokens = self.base_test.flat.shape[0]
        by_layer = T.recovery(self.planted, self._chosen_directions(model))
        s = None if by_layer is None else len(next(iter(self._chosen_directions(model).values())))
        n = self.planted[0].spectrum_size
        return {
            "protocol": "held-out SST-2 dev sentences: student vs planted teacher, last-layer token states",
            "per_task": {
                TASK: {
                    "matched": float(1 - d.sum() / d0.sum()),
                    "distance": float(d.sum() / tokens),  # per token
                    "base_distance": float(d0.sum() / tokens),
                    # the sentence embeddings (what users of this model read): student vs teacher cosine distance
                    "embedding_cosine_distance": float(
                        (1 - (student.pooled() * self.teacher_test.pooled()).sum(-1)).mean()
                    ),
                    "recovery": None if by_layer is None else float(np.mean(list(by_layer.values()))),
                    "recovery_chance": None if s is None else s / n,
                    "recovery_by_layer": by_layer,
                    "teacher": self._teacher_info,
                    "n": len(self.test),
                    "items": {
                        "ids": [i for i, _ in self.test],
                        "distance": d.tolist(),
                        "base_distance": d0.tolist(),
                    },
                }
            },
            "missing_tasks": [],
        }

    def identity(self) -> dict[str, Any]:
        return {
            "model": model_identity(self.cfg.model.name, self.model_path),
            "data": {
                "source": "SST-2 sentences (text only)",
                "files": {f"{p.parent.name}/{p.name}": file_sha256(p) for p in self.data_files},
                "n_train": len(self.train),
                "n_val": len(self.val),
                "n_test": {TASK: len(self.test)},
            },
            "teacher": {k: v for k, v in self._teacher_info.items() if k not in ("positions", "magnitudes")},
        }

    @staticmethod
    def batch_size_of(batch: Any) -> int:
        return int(batch["labels"].shape[0])
