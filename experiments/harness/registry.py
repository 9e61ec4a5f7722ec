"""Experiment families: each is a folder `experiments/<family>/`, found by walking the folders.

A family folder holds `family.py` with one `@register_family` class (a `Family` subclass), `defaults.yaml`,
`profiles.yaml` and one folder per experiment (`<name>/experiment.yaml`). The class declares what the shared
loop, sweeps, records and tables need to know, so that none of them names a family:

- its typed config sections (`data_config`, `eval_config`: frozen dataclasses);
- its test metrics, each with its direction, and the primary one the tables and verdicts read (and, when the
  paper's numbers were scored another way, the metric that follows the paper's way: `paper_metric`);
- its validation metrics (with directions) for learning-rate and checkpoint selection;
- whether a run trains on one task (`one_task_per_run`, e.g. GLUE) or on a mix scored on every task;
- its protocol version, recorded in every run;
- how to recompute a task's primary metric from the per-item arrays a record stores (`task_score`), so that
  every statistic resamples items and recomputes the task's own metric.

An instance is one run: the loop calls `build_model`, `train_loader`, `loss`, `validate`, `evaluate_test`
and `identity` on it. This mirrors lm-eval's task index (folders walked, a duplicate name fails loudly, an
unknown name lists the known ones).
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from baselines.registry import Registry
from experiments.harness.errors import UnknownFamilyError

EXPERIMENTS_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Metric:
    """A reported number and its direction."""

    name: str
    higher_is_better: bool = True
    description: str = ""


@dataclass(frozen=True)
class NoEvalConfig:
    """For families whose test scoring has no settings."""


class Family(abc.ABC):
    """One experiment family (class-level declarations) and one run of it (an instance)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    protocol_version: ClassVar[str]
    data_config: ClassVar[type]
    eval_config: ClassVar[type] = NoEvalConfig
    metrics: ClassVar[Mapping[str, Metric]]  # test metrics recorded per task
    primary_metric: ClassVar[str]  # the per-task metric tables and verdicts read (a key of `metrics`)
    validation_metrics: ClassVar[Mapping[str, Metric]]  # what `validate` returns
    one_task_per_run: ClassVar[bool] = False  # True: profiles sweep `data.task` over their `tasks`
    score_unit: ClassVar[str] = "points"  # tables show 100 x the primary metric
    chance: ClassVar[Mapping[str, float]] = {}  # task -> primary metric of a trivial predictor (plots)
    paper_model: ClassVar[str | None] = None  # the model the paper's numbers of this family come from
    # The per-task metric (a key of `metrics`) scored as the paper's numbers were, when that is not the primary
    # metric (e.g. another answer-extraction rule): the tables print it beside the paper's numbers.
    paper_metric: ClassVar[str | None] = None
    supports_slow_tokenizer: ClassVar[bool] = False  # honours model.slow_tokenizer

    def __init__(self, cfg: Any, *, seed: int = 0):
        self.cfg = cfg
        self.seed = seed  # the run's seed (the loop seeds torch with it before building the family)

    # -- declarations used by the harness ------------------------------------------------------------------
    @classmethod
    def folder(cls) -> Path:
        return EXPERIMENTS_ROOT / cls.name

    @classmethod
    def higher_is_better(cls, metric: str) -> bool:
        m = {**cls.metrics, **cls.validation_metrics}.get(metric)
        if m is None:
            known = sorted({*cls.metrics, *cls.validation_metrics})
            raise ValueError(f"family {cls.name}: unknown metric {metric!r} (known: {', '.join(known)})")
        return m.higher_is_better

    mean_item_field: ClassVar[str | None] = (
        None  # primary metric = mean of this per-item array (e.g. "correct")
    )

    @classmethod
    def task_score(cls, task: str, items: Mapping[str, np.ndarray]) -> float:
        """The task's primary metric recomputed from per-item arrays (the record's `items`, possibly
        resampled): the mean of `mean_item_field` by default; override for other metrics (e.g. Matthews
        correlation of labels and predictions)."""
        if cls.mean_item_field is None:
            raise NotImplementedError(f"family {cls.name}: set mean_item_field or override task_score")
        return float(np.mean(items[cls.mean_item_field]))

    @classmethod
    def task_scores(cls, task: str, items: Mapping[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
        """`task_score` of each resample (idx: [B, n] item indices) -> [B]. Override with a vectorised form
        when the metric is slow to call thousands of times."""
        if cls.mean_item_field is not None and cls.task_score.__func__ is Family.task_score.__func__:  # type: ignore[attr-defined]
            return np.asarray(items[cls.mean_item_field], dtype=float)[idx].mean(axis=1)
        return np.array(
            [cls.task_score(task, {k: np.asarray(v)[row] for k, v in items.items()}) for row in idx]
        )

    @classmethod
    def score_label(cls, task: str | None) -> str:
        """A plot's axis name for 100 x the primary metric on `task` (None: the mean over the tasks)."""
        metric = cls.primary_metric.replace("_", " ")
        unit = "%" if "accuracy" in cls.primary_metric else "x100"
        return f"{task or 'mean over tasks'}: {metric} ({unit})"

    @classmethod
    def scoring_rule(cls, record: Mapping[str, Any]) -> str | None:
        """How a record's primary metric was read, when the family has several ways (e.g. its answer-extraction
        rule), for the tables' text; None when there is nothing to name."""
        return None

    @classmethod
    def check_config(cls, cfg: Any) -> list[tuple[str, str]]:
        """Family-specific value checks of a merged config: (key, problem) pairs; empty when fine."""
        return []

    @classmethod
    def check_data(cls, cfg: Any) -> None:
        """Raise (FileNotFoundError / ValueError naming the file) when the data a run needs is absent or
        unparseable; called before any run starts."""
        return None

    @classmethod
    def write_artifacts(cls, records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        """Files `make tables` writes beside the tables from the profile's complete run records (all of them,
        random-weight code checks included: say so in what is written), e.g. image grids; none by default."""
        return []

    @classmethod
    def estimate(cls, cfg: Any) -> dict[str, Any] | None:
        """GPU memory and hours of a full-scale run, for `list --estimate`: `estimate_run(cfg)` of the family
        folder's `estimate.py` (imported when asked: it may need the model's code), None when it has none."""
        module_name = f"{cls.__module__.rsplit('.', 1)[0]}.estimate"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                return None
            raise
        return module.estimate_run(cfg)

    # -- one run -------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def num_train(self) -> int: ...

    @abc.abstractmethod
    def build_model(self) -> torch.nn.Module: ...

    def enable_gradient_checkpointing(self, model: torch.nn.Module) -> None:
        """`model.gradient_checkpointing`: recompute each block's activations in the backward pass (called on
        the model `build_model` returned, before the method wraps it). transformers' API by default."""
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need an input grad

    @abc.abstractmethod
    def train_loader(self, seed: int, micro_batch_size: int) -> DataLoader: ...

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor: ...

    @abc.abstractmethod
    def validate(self, model: torch.nn.Module, device: Any) -> dict[str, float]: ...

    @abc.abstractmethod
    def evaluate_test(self, model: torch.nn.Module, device: Any) -> dict[str, Any]:
        """{"protocol": str, "per_task": {task: {"n", <metrics>, "items": {"ids": [...], <arrays>}}},
        "missing_tasks": [...]}; the loop adds the aggregate `score`."""

    def tracked_images(self) -> dict[str, Any]:
        """Images of the last `evaluate_test` for the experiment trackers (`train.report_to`), name -> PIL image
        (DreamBooth: its grid of generated images); none by default."""
        return {}

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]: ...

    @staticmethod
    def batch_size_of(batch: Any) -> int:
        return int(batch["labels"].shape[0])


def shuffled_loader(
    dataset: Any, micro_batch_size: int, seed: int, collate_fn: Any, *, drop_last: bool = True
) -> DataLoader:
    """A training loader as the families build it: a new permutation of `dataset` each epoch, drawn from the
    run's seed alone (so a rerun, or a resumed run fast-forwarding it, sees the same batches)."""
    return DataLoader(
        dataset,
        batch_size=micro_batch_size,
        shuffle=True,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate_fn,
    )


def _check_family(cls: type[Family]) -> None:
    name = cls.__dict__["name"]
    for attr in ("protocol_version", "data_config", "metrics", "primary_metric", "validation_metrics"):
        if not hasattr(cls, attr):
            raise ValueError(f"family {name}: missing class attribute {attr!r}")
    if cls.primary_metric not in cls.metrics:
        raise ValueError(f"family {name}: primary_metric {cls.primary_metric!r} is not in its metrics")
    if cls.paper_metric is not None and cls.paper_metric not in cls.metrics:
        raise ValueError(f"family {name}: paper_metric {cls.paper_metric!r} is not in its metrics")


def _discover() -> None:
    """Import `experiments/<family>/family.py` of every folder that has one and a defaults.yaml."""
    for d in sorted(EXPERIMENTS_ROOT.iterdir()):
        if (d / "family.py").is_file() and (d / "defaults.yaml").is_file():
            importlib.import_module(f"experiments.{d.name}.family")


FAMILIES: Registry[type[Family]] = Registry(
    "experiment family", Family, unknown=UnknownFamilyError, discover=_discover, check=_check_family
)
register_family = FAMILIES.register


def available_families() -> list[str]:
    return FAMILIES.names()


def get_family(name: str) -> type[Family]:
    return FAMILIES.get(name)
