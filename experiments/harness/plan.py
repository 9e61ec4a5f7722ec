"""The plan of a profile: which runs it asks for, their config hashes and record paths, which are missing or stale,
and which learning rate each (experiment, task) chose on validation. A pure function of configs and records:
reporting reads it, the executor (`sweep.py`) runs it, and neither imports the other.

A run is done when its record says "complete" and its config hash equals the planned config's; anything else
(absent, failed, interrupted, stale) is to run again. The learning rate of each (experiment, task) is chosen on
the validation split from the tuning seeds' runs over the profile's grid; the other seeds then run at that rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baselines import build_method
from experiments.harness.config import ExperimentConfig, config_hash, with_overrides
from experiments.harness.profiles import Profile, experiment_config, load_profile
from experiments.harness.records import check_record, read_record, run_path
from experiments.harness.registry import get_family

Key = tuple[str, str | None]  # (experiment, task); task is None for families that score every task per run


def key_label(key: Key) -> str:
    return key[0] if key[1] is None else f"{key[0]}/{key[1]}"


@dataclass(frozen=True)
class PlannedRun:
    experiment: str
    task: str | None
    seed: int
    lr: float
    stage: str  # "tune" (grid x tune seeds) or "final" (other seeds at the chosen rate)
    path: Path
    config_hash: str
    family: str

    def status(self) -> str:
        """missing / complete / failed / interrupted / stale (complete, but for a config that has changed) /
        invalid (a record that does not check: `check_record`; run again, the bad one set aside)."""
        rec = read_record(self.path)
        if rec is None:
            return "missing"
        if self.problems(rec):
            return "invalid"
        if rec.get("status") == "complete" and rec.get("config_hash") != self.config_hash:
            return "stale"
        return str(rec.get("status"))

    def problems(self, rec: dict[str, Any] | None = None) -> list[str]:
        """Why the record at this run's path cannot be trusted (empty when it can, or when there is none)."""
        rec = read_record(self.path) if rec is None else rec
        return [] if rec is None else check_record(self.path, rec, get_family(self.family))


def load_configs(profile: Profile) -> dict[Key, ExperimentConfig]:
    return {
        (name, task): experiment_config(profile, name, task)
        for name in profile.experiments
        for task in profile.task_list
    }


def planned_hash(cfg: ExperimentConfig, lr: float) -> str:
    cfg = with_overrides(cfg, train={"lr": float(lr)})
    return config_hash(cfg, dict(build_method(cfg.method.name, **cfg.method.params).params))


def _planned(
    profile: Profile, key: Key, cfg: ExperimentConfig, seed: int, lr: float, stage: str, results_dir: Path
) -> PlannedRun:
    path = run_path(results_dir, profile.name, profile.family, key[0], seed, lr, key[1])
    return PlannedRun(key[0], key[1], seed, lr, stage, path, planned_hash(cfg, lr), profile.family)


def tune_plan(profile: Profile, configs: dict[Key, ExperimentConfig], results_dir: Path) -> list[PlannedRun]:
    return [
        _planned(profile, key, cfg, seed, lr, "tune", results_dir)
        for key, cfg in configs.items()
        for lr in profile.grid_for(cfg.method.name, cfg.train.lr, cfg.name)
        for seed in profile.tune_seeds
    ]


def best_validation(rec: dict[str, Any]) -> float:
    """The selection metric at the kept checkpoint."""
    metric = rec["selection_metric"]
    return [p[metric] for p in rec["validation_curve"] if p["step"] == rec["best_step"]][0]


def choose_lr(profile: Profile, key: Key, cfg: ExperimentConfig, results_dir: Path) -> dict[str, Any] | None:
    """The grid rate with the best mean validation metric over the tuning seeds (ties: the smaller rate); the
    test set is never read. None while a tuning run of this (experiment, task) is not complete and current."""
    sign = 1.0 if get_family(profile.family).higher_is_better(cfg.train.selection_metric) else -1.0
    scores = {}
    for lr in profile.grid_for(cfg.method.name, cfg.train.lr, cfg.name):
        vals = []
        for seed in profile.tune_seeds:
            planned = _planned(profile, key, cfg, seed, lr, "tune", results_dir)
            if planned.status() != "complete":
                return None
            vals.append(sign * best_validation(read_record(planned.path) or {}))
        scores[lr] = sum(vals) / len(vals)
    chosen = max(sorted(scores), key=lambda lr: scores[lr])
    return {
        "lr": chosen,
        "scores": {f"{k:g}": sign * v for k, v in scores.items()},
        "metric": cfg.train.selection_metric,
    }


def final_plan(
    profile: Profile, configs: dict[Key, ExperimentConfig], results_dir: Path
) -> tuple[list[PlannedRun], dict[Key, Any]]:
    runs, chosen = [], {}
    for key, cfg in configs.items():
        choice = choose_lr(profile, key, cfg, results_dir)
        chosen[key] = choice
        if choice is None:
            continue
        for seed in profile.seeds:
            if seed not in profile.tune_seeds:
                runs.append(_planned(profile, key, cfg, seed, choice["lr"], "final", results_dir))
    return runs, chosen


def selected_lr_path(results_dir: Path, profile: Profile) -> Path:
    return Path(results_dir) / profile.name / profile.family / "selected_lr.json"


def plan_status(family: str, profile_name: str, results_dir: str | Path) -> list[dict[str, Any]]:
    """Every planned run with its status (for `list`); final-stage runs appear once their rate is chosen."""
    results_dir = Path(results_dir)
    profile = load_profile(family, profile_name)
    configs = load_configs(profile)
    final, chosen = final_plan(profile, configs, results_dir)
    rows = [
        {
            "experiment": r.experiment,
            "task": r.task,
            "seed": r.seed,
            "lr": r.lr,
            "stage": r.stage,
            "status": r.status(),
            "path": str(r.path),
            "problems": r.problems(),
        }
        for r in tune_plan(profile, configs, results_dir) + final
    ]
    for key, choice in chosen.items():
        if choice is None:
            pending = [s for s in profile.seeds if s not in profile.tune_seeds]
            rows += [
                {
                    "experiment": key[0],
                    "task": key[1],
                    "seed": s,
                    "lr": None,
                    "stage": "final",
                    "status": "awaiting lr choice",
                    "path": "",
                    "problems": [],
                }
                for s in pending
            ]
    return rows
