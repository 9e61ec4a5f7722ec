"""GLUE (the paper's NLU experiment): an encoder fine-tuned per task for sequence classification (regression
for STS-B), the classifier head trained by every method and counted apart.

Protocol: GLUE's test labels are private, so the dev set is the reported test set and is never used for any
choice; the validation split for learning-rate and checkpoint selection is `data.val_examples` items carved out
of train with `data.split_seed`. One run trains on one task (`data.task`); a profile lists its tasks.
Metrics exactly as GLUE (metrics.py); every record keeps per-item ids, labels and predictions so that each
statistic recomputes the task's own metric from resampled items.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from experiments.glue.data import (
    TASKS,
    GlueExample,
    default_data_dir,
    load_hub_split,
    load_tsv,
    spec,
    task_file,
)
from experiments.glue.metrics import batch_scores, task_metrics
from experiments.harness.config import ExperimentConfig, check_positive
from experiments.harness.datadir import resolve_data_dir
from experiments.harness.loading import resolve_model
from experiments.harness.records import file_sha256, model_identity
from experiments.harness.registry import Family, Metric, register_family, shuffled_loader


@dataclass(frozen=True)
class GlueData:
    task: str = "cola"  # set per run by the profile's `tasks`
    source: Literal["local", "hub"] = "local"  # local GLUE .tsv files, or nyu-mll/glue through `datasets`
    data_dir: str | None = None  # None: LORADASH_GLUE_DIR, else ../shared/data/glue
    hub_path: str = "nyu-mll/glue"
    max_seq_len: int = 128  # tokens of the (pair of) texts, truncated longest-first
    val_examples: int = 500  # carved out of train with split_seed, never from the dev (= test) set
    train_examples: int | None = None  # a fixed subset of the rest of train; None = all
    test_examples: int | None = None  # a fixed subset of dev; None = all (the reported numbers use all)
    split_seed: int = 42


def _subset(items: list[GlueExample], n: int | None, seed: str) -> list[GlueExample]:
    if n is None or n >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def load_splits(d: GlueData) -> tuple[list[GlueExample], list[GlueExample], list[GlueExample], list[Path]]:
    """(train, validation, test, files read). Validation is carved out of train; test is the dev set."""
    if d.source == "hub":
        pool, test, files = (
            load_hub_split(d.task, "train", path=d.hub_path),
            load_hub_split(d.task, "test", path=d.hub_path),
            [],
        )
    else:
        data_dir = resolve_data_dir(d.data_dir, default_data_dir)
        files = [task_file(d.task, "train", data_dir), task_file(d.task, "test", data_dir)]
        pool, test = load_tsv(d.task, files[0]), load_tsv(d.task, files[1])
    if len(pool) <= d.val_examples:
        raise ValueError(
            f"GLUE {d.task}: {len(pool)} training examples cannot spare data.val_examples={d.val_examples}"
        )
    order = list(range(len(pool)))
    random.Random(d.split_seed).shuffle(order)
    val = [pool[i] for i in sorted(order[: d.val_examples])]
    train = [pool[i] for i in sorted(order[d.val_examples :])]
    train = _subset(train, d.train_examples, f"{d.split_seed}-{d.task}-train")
    test = _subset(test, d.test_examples, f"{d.split_seed}-{d.task}-test")
    return train, val, test, files


def collate(
    tokenizer, examples: list[GlueExample], *, max_seq_len: int, regression: bool
) -> dict[str, torch.Tensor]:
    texts = [e.texts for e in examples]
    firsts = [t[0] for t in texts]
    seconds = [t[1] for t in texts] if len(texts[0]) > 1 else None
    enc = tokenizer(
        firsts, seconds, padding=True, truncation=True, max_length=max_seq_len, return_tensors="pt"
    )
    batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    dtype = torch.float32 if regression else torch.long
    batch["labels"] = torch.tensor([e.label for e in examples], dtype=dtype)
    return batch


@register_family
class GlueRun(Family):
    """One GLUE task, fine-tuned and scored on its dev set."""

    name = "glue"
    description = "GLUE (the paper's NLU experiment): sequence classification / regression, dev set reported"
    protocol_version = "glue-dev-v1"
    data_config = GlueData
    metrics: ClassVar[Mapping[str, Metric]] = {
        "glue_score": Metric("glue_score", True, "the task's GLUE metric (MRPC/QQP and STS-B: mean of two)"),
        "mcc": Metric("mcc", True, "Matthews correlation (CoLA)"),
        "accuracy": Metric("accuracy", True),
        "f1": Metric("f1", True, "F1 of the positive class (MRPC, QQP)"),
        "pearson": Metric("pearson", True, "Pearson correlation (STS-B)"),
        "spearman": Metric("spearman", True, "Spearman correlation (STS-B)"),
    }
    primary_metric = "glue_score"
    validation_metrics: ClassVar[Mapping[str, Metric]] = {
        "val_loss": Metric("val_loss", False),
        "val_score": Metric("val_score", True, "the task's GLUE metric on the validation split"),
    }
    one_task_per_run = True
    chance: ClassVar[Mapping[str, float]] = {"cola": 0.0, "stsb": 0.0, "sst2": 0.509, "rte": 0.527,
                                             "mrpc": 0.748, "qnli": 0.5, "qqp": 0.5, "mnli": 0.354, "wnli": 0.563}  # fmt: skip
    paper_model = "DeBERTaV3-base"

    @classmethod
    def score_label(cls, task: str | None) -> str:
        if task is None:
            return "mean GLUE metric over tasks (x100)"
        names = {"accuracy": "accuracy (%)", "mcc": "Matthews correlation (x100)",
                 "f1_accuracy": "mean of F1 and accuracy (%)", "pearson_spearman": "mean of Pearson and Spearman (x100)"}  # fmt: skip
        s = spec(task)
        return f"{s.folder} {names.get(s.metric, s.metric)}"

    @classmethod
    def task_score(cls, task: str, items: Mapping[str, np.ndarray]) -> float:
        return task_metrics(task, items["labels"], items["predictions"])["glue_score"]

    @classmethod
    def task_scores(cls, task: str, items: Mapping[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
        return batch_scores(task, items["labels"], items["predictions"], idx)

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> list[tuple[str, str]]:
        d = cfg.data
        problems = check_positive({"data.max_seq_len": d.max_seq_len, "data.val_examples": d.val_examples})
        problems += check_positive(
            {"data.train_examples": d.train_examples, "data.test_examples": d.test_examples}, allow_none=True
        )
        if d.task not in TASKS:
            problems.append(("data.task", f"unknown GLUE task {d.task!r} (known: {', '.join(TASKS)})"))
        return problems

    @classmethod
    def check_data(cls, cfg: ExperimentConfig) -> None:
        if cfg.data.source == "local":
            load_splits(cfg.data)

    def __init__(self, cfg: ExperimentConfig, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        d = cfg.data
        self.task = d.task
        self.regression = spec(d.task).num_labels == 1
        self.train, self.val, self.test, self.data_files = load_splits(d)
        self.model_path = resolve_model(cfg.model.name)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or self.model_path)
        self._collate = partial(
            collate, self.tokenizer, max_seq_len=d.max_seq_len, regression=self.regression
        )

    @property
    def num_train(self) -> int:
        return len(self.train)

    def build_model(self) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        from experiments.harness.loading import load_pretrained

        n = spec(self.task).num_labels
        return load_pretrained(
            AutoModelForSequenceClassification,
            self.model_path,
            num_labels=n,
            problem_type="regression" if n == 1 else "single_label_classification",
            dtype=getattr(torch, self.cfg.model.dtype),
            ignore_mismatched_sizes=True,  # a checkpoint with another task's head gets a fresh head
        )

    def train_loader(self, seed: int, micro_batch_size: int) -> DataLoader:
        return shuffled_loader(self.train, micro_batch_size, seed, self._collate)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.regression:
            return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction=reduction)
        return F.cross_entropy(logits.float(), labels, reduction=reduction)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self._loss(model(**inputs).logits, batch["labels"])

    @torch.no_grad()
    def _predict(self, model: torch.nn.Module, items: list[GlueExample], device: Any) -> tuple[list, float]:
        was_training = model.training
        model.eval()
        order = sorted(range(len(items)), key=lambda i: sum(len(t) for t in items[i].texts))
        preds: list[Any] = [None] * len(items)
        total = 0.0
        bs = self.cfg.train.eval_batch_size
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            batch = {k: v.to(device) for k, v in self._collate([items[i] for i in idx]).items()}
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits.float()
            total += float(self._loss(logits, batch["labels"], reduction="sum"))
            out = logits.squeeze(-1).tolist() if self.regression else logits.argmax(-1).tolist()
            for i, p in zip(idx, out, strict=True):
                preds[i] = p
        model.train(was_training)
        return preds, total / max(1, len(items))

    def validate(self, model: torch.nn.Module, device: Any) -> dict[str, float]:
        preds, loss = self._predict(model, self.val, device)
        score = task_metrics(self.task, np.array([e.label for e in self.val]), np.array(preds))["glue_score"]
        return {"val_loss": loss, "val_score": score}

    def evaluate_test(self, model: torch.nn.Module, device: Any) -> dict[str, Any]:
        preds, _ = self._predict(model, self.test, device)
        labels = [e.label for e in self.test]
        metrics = task_metrics(self.task, np.array(labels), np.array(preds))
        return {
            "protocol": f"GLUE dev set as test ({spec(self.task).metric}); validation carved out of train",
            "per_task": {
                self.task: {
                    **metrics,
                    "n": len(self.test),
                    "items": {"ids": [e.id for e in self.test], "labels": labels, "predictions": preds},
                }
            },
            "missing_tasks": [],
        }

    def identity(self) -> dict[str, Any]:
        return {
            "model": model_identity(self.cfg.model.name, self.model_path),
            "data": {
                "task": self.task,
                "source": self.cfg.data.source,
                "files": {
                    p.name if not p.parent.name else f"{p.parent.name}/{p.name}": file_sha256(p)
                    for p in self.data_files
                },  # fmt: skip
                "n_train": len(self.train),
                "n_val": len(self.val),
                "n_test": {self.task: len(self.test)},
            },
        }
