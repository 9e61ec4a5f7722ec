"""The commonsense family (embedded CPU default): an encoder scores each (question, choice) pair, the best
choice is the answer; data splits, model, loss, validation and test scoring for the shared loop.

Splits are a function of `data.split_seed` only, so every method and seed sees the same training subset, the
same validation items (carved out of the training data) and the same test items.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader

from experiments.commonsense.data import Example, default_data_dir, load_examples, load_mixed, task_file
from experiments.commonsense.multiple_choice import collate, loss_fn, predict
from experiments.harness.config import ExperimentConfig, check_positive
from experiments.harness.datadir import resolve_data_dir as resolve_dir
from experiments.harness.errors import MissingFileError
from experiments.harness.loading import resolve_model
from experiments.harness.records import file_sha256, model_identity
from experiments.harness.registry import Family, Metric, register_family, shuffled_loader


@dataclass(frozen=True)
class CommonsenseData:
    data_dir: str | None = None  # None: LORADASH_DATA_DIR, else ../shared/data/commonsense
    train_file: str | None = None  # a mixed LLM-Adapters file (commonsense_170k.json); None: train_tasks
    train_tasks: tuple[str, ...] = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")
    eval_tasks: tuple[str, ...] = (
        "boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa",
    )  # fmt: skip
    train_examples: int | None = None  # subset of the training mix (after the validation split); None = all
    val_examples: int = 200  # carved out of the training data, never from a test set
    test_examples_per_task: int | None = None  # fixed random subset of each test set; None = all
    max_seq_len: int = 64  # multiple choice: tokens per (question, choice) pair
    split_seed: int = 42  # the same subsets and validation split for every method and seed
    # causal LM (paper protocol): Alpaca prompt template for training, cutoff, loss on the prompt too
    prompt_template: str = "train"
    cutoff_len: int = 256
    train_on_inputs: bool = True


def check_commonsense_data(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    from experiments.commonsense.data import TASKS

    d = cfg.data
    problems = check_positive({"data.max_seq_len": d.max_seq_len, "data.val_examples": d.val_examples,
                               "data.cutoff_len": d.cutoff_len})  # fmt: skip
    problems += check_positive(
        {"data.train_examples": d.train_examples, "data.test_examples_per_task": d.test_examples_per_task},
        allow_none=True,
    )
    if not d.eval_tasks:
        problems.append(("data.eval_tasks", "must name at least one task"))
    for key, tasks in (("data.eval_tasks", d.eval_tasks), ("data.train_tasks", d.train_tasks)):
        for task in tasks:
            if task not in TASKS:
                problems.append((key, f"unknown task {task!r} (known: {', '.join(TASKS)})"))
    if d.prompt_template not in ("train", "eval"):
        problems.append(("data.prompt_template", f"must be 'train' or 'eval', got {d.prompt_template!r}"))
    return problems


def resolve_data_dir(data_dir: str | None) -> Path:
    return resolve_dir(data_dir, default_data_dir)


def load_train_pool(cfg: ExperimentConfig, data_dir: Path) -> tuple[list[Example], list[Path]]:
    """The training pool (a mixed file such as commonsense_170k.json, or the listed tasks' train sets)."""
    d = cfg.data
    if d.train_file:
        files = [data_dir / d.train_file]
        pool = load_mixed(files[0])
    else:
        files = [task_file(task, "train", data_dir) for task in d.train_tasks]
        pool = [e for task, f in zip(d.train_tasks, files, strict=True) for e in load_examples(task, f)]
    if len(pool) <= d.val_examples:
        raise ValueError(f"{len(pool)} training examples cannot spare data.val_examples={d.val_examples}")
    return pool, files


def load_test_sets(
    cfg: ExperimentConfig, data_dir: Path
) -> tuple[dict[str, list[Example]], list[str], list[Path], dict[str, list[int]]]:
    """Each eval task's test set (a fixed random subset when `test_examples_per_task` is set), the tasks
    without a test file (reported, not silently dropped), the files read, and each kept item's index in its
    test file (its id)."""
    d = cfg.data
    test: dict[str, list[Example]] = {}
    ids: dict[str, list[int]] = {}
    missing: list[str] = []
    files: list[Path] = []
    for task in d.eval_tasks:
        path = task_file(task, "test", data_dir)
        if not path.is_file():
            missing.append(task)
            continue
        files.append(path)
        items = load_examples(task, path)
        keep = list(range(len(items)))
        n = d.test_examples_per_task
        if n is not None and n < len(items):
            keep = sorted(random.Random(f"{d.split_seed}-{task}").sample(range(len(items)), n))
        test[task] = [items[i] for i in keep]
        ids[task] = keep
    if not test:
        raise MissingFileError(f"none of data.eval_tasks {list(d.eval_tasks)} has a test file in {data_dir}")
    return test, missing, files, ids


@register_family
class CommonsenseRun(Family):
    """Commonsense reasoning scored as multiple choice by an encoder (all-MiniLM-L6-v2 by default)."""

    name = "commonsense"
    description = "commonsense reasoning (LLM-Adapters data), multiple-choice scoring by an encoder"
    protocol_version = "commonsense-mc-v2"
    data_config = CommonsenseData
    metrics: ClassVar[Mapping[str, Metric]] = {"accuracy": Metric("accuracy", True, "exact match of argmax")}
    mean_item_field = "correct"  # per-item values whose mean is the primary metric
    primary_metric = "accuracy"
    validation_metrics: ClassVar[Mapping[str, Metric]] = {
        "val_loss": Metric("val_loss", False),
        "val_accuracy": Metric("val_accuracy", True),
    }
    paper_model = "LLaMA-7B"

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> list[tuple[str, str]]:
        return check_commonsense_data(cfg)

    @classmethod
    def check_data(cls, cfg: ExperimentConfig) -> None:
        data_dir = resolve_data_dir(cfg.data.data_dir)
        load_train_pool(cfg, data_dir)
        load_test_sets(cfg, data_dir)

    def __init__(self, cfg: ExperimentConfig, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        d = cfg.data
        self.data_dir = resolve_data_dir(d.data_dir)
        pool, files = load_train_pool(cfg, self.data_dir)
        train, self.val = self.split_validation(pool)
        self.train: list[Example] = train[: d.train_examples] if d.train_examples else train
        self.test, self.missing_tasks, test_files, self.test_ids = load_test_sets(cfg, self.data_dir)
        self.data_files = files + test_files
        self.model_path = resolve_model(cfg.model.name)
        self.tokenizer = self.load_tokenizer()

    def load_tokenizer(self) -> Any:
        """`model.tokenizer`, else the model's own (AutoTokenizer's choice)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.cfg.model.tokenizer or self.model_path)

    def split_validation(self, pool: list[Example]) -> tuple[list[Example], list[Example]]:
        """(train, validation): `val_examples` items of the training pool, chosen by `split_seed`."""
        order = list(range(len(pool)))
        random.Random(self.cfg.data.split_seed).shuffle(order)
        n = self.cfg.data.val_examples
        return [pool[i] for i in order[n:]], [pool[i] for i in order[:n]]

    @property
    def num_train(self) -> int:
        return len(self.train)

    def build_model(self) -> torch.nn.Module:
        from transformers import AutoModelForMultipleChoice

        from experiments.harness.loading import load_pretrained

        dtype = getattr(torch, self.cfg.model.dtype)
        return load_pretrained(AutoModelForMultipleChoice, self.model_path, dtype=dtype)

    def train_loader(self, seed: int, micro_batch_size: int) -> DataLoader:
        collate_fn = partial(collate, self.tokenizer, max_seq_len=self.cfg.data.max_seq_len)
        return shuffled_loader(self.train, micro_batch_size, seed, collate_fn)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(model, batch)

    def _predict(self, model: torch.nn.Module, examples: list[Example], device: Any) -> dict[str, Any]:
        return predict(
            model,
            self.tokenizer,
            examples,
            batch_size=self.cfg.train.eval_batch_size,
            max_seq_len=self.cfg.data.max_seq_len,
            device=device,
        )

    def validate(self, model: torch.nn.Module, device: Any) -> dict[str, float]:
        out = self._predict(model, self.val, device)
        correct = sum(p == e.label for p, e in zip(out["predictions"], self.val, strict=True))
        return {"val_loss": out["loss"], "val_accuracy": correct / len(self.val)}

    def evaluate_test(self, model: torch.nn.Module, device: Any) -> dict[str, Any]:
        per_task = {}
        for task, items in self.test.items():
            out = self._predict(model, items, device)
            correct = [int(p == e.label) for p, e in zip(out["predictions"], items, strict=True)]
            per_task[task] = {
                "accuracy": sum(correct) / len(items),
                "n": len(items),
                "items": {"ids": self.test_ids[task], "correct": correct, "predictions": out["predictions"]},
            }
        return {
            "protocol": "multiple-choice scoring of (question, choice) pairs; exact match of argmax",
            "per_task": per_task,
            "missing_tasks": self.missing_tasks,
        }

    def identity(self) -> dict[str, Any]:
        return {
            "model": model_identity(self.cfg.model.name, self.model_path),
            "data": {
                "data_dir": str(self.data_dir),
                "files": {str(p.relative_to(self.data_dir)): file_sha256(p) for p in self.data_files},
                "n_train": len(self.train),
                "n_val": len(self.val),
                "n_test": {t: len(v) for t, v in self.test.items()},
            },
        }
