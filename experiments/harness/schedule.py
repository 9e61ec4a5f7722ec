"""The one learning-rate schedule: how many optimizer steps a run takes, its warm-up, and the scheduler.

The training loop, the preflight (LoRA-Dash's t against the run's length), the GPU estimates and the TSD probe
all call these, so a run's length and rate curve are computed by one rule.
"""

from __future__ import annotations

import math
from typing import Any

from experiments.harness.config import ExperimentConfig


def total_steps(cfg: ExperimentConfig, num_train: int | None) -> int:
    """Optimizer steps of a run: `train.max_steps`, else `train.epochs` passes over `num_train` examples in
    batches of `train.batch_size` (a last partial batch counts as a step)."""
    t = cfg.train
    if t.max_steps is not None:
        return t.max_steps
    if num_train is None:
        raise ValueError(f"{cfg.name}: an epoch-based run needs the number of training examples")
    return (t.epochs or 0) * math.ceil(num_train / t.batch_size)


def warmup_steps(cfg: ExperimentConfig, total: int) -> int:
    """Linear warm-up length: `train.warmup_ratio` x the run's steps when set, else `train.warmup_steps`."""
    t = cfg.train
    return round(t.warmup_ratio * total) if t.warmup_ratio is not None else t.warmup_steps


def lr_scheduler(optimizer: Any, cfg: ExperimentConfig, total: int) -> Any:
    """Warm-up, then linear decay to 0 at `total` steps (`schedule: linear`) or a constant rate."""
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    warmup = warmup_steps(cfg, total)
    if cfg.train.schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    return get_constant_schedule_with_warmup(optimizer, warmup)
