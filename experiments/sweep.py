"""Sweeps: the plan of runs a profile asks for, what is missing, learning-rate choice, resumable execution.

A run is done when its record says "complete"; anything else (absent, failed, interrupted) is run again, so
a killed sweep resumes where it stopped and a complete run is never repeated or overwritten. The learning
rate of each experiment is chosen on the validation split from the tuning seeds' runs over the profile's grid;
the other seeds then run at that rate only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.config import ExperimentConfig, load_experiment
from experiments.profiles import Profile, load_profile
from experiments.results import read_record, run_path, write_atomic


@dataclass(frozen=True)
class PlannedRun:
    experiment: str
    seed: int
    lr: float
    stage: str  # "tune" (grid x tune seeds) or "final" (other seeds at the chosen rate)
    path: Path

    def status(self) -> str:
        rec = read_record(self.path)
        return "missing" if rec is None else str(rec.get("status"))


def load_configs(profile: Profile) -> dict[str, ExperimentConfig]:
    return {
        name: load_experiment(
            profile.family,
            name,
            profile_overrides=profile.overrides,
            profile_source=profile.source,
            method_overrides=profile.method_overrides,
        )
        for name in profile.experiments
    }


def tune_plan(profile: Profile, configs: dict[str, ExperimentConfig], results_dir: Path) -> list[PlannedRun]:
    return [
        PlannedRun(
            name, seed, lr, "tune", run_path(results_dir, profile.name, profile.family, name, seed, lr)
        )
        for name, cfg in configs.items()
        for lr in profile.grid_for(cfg.method.name, cfg.train.lr)
        for seed in profile.tune_seeds
    ]


def choose_lr(profile: Profile, cfg: ExperimentConfig, results_dir: Path) -> dict[str, Any] | None:
    """The grid rate with the best mean validation metric over the tuning seeds (ties: the smaller rate).
    None while a tuning run of this experiment is not complete."""
    scores = {}
    for lr in profile.grid_for(cfg.method.name, cfg.train.lr):
        vals = []
        for seed in profile.tune_seeds:
            rec = read_record(run_path(results_dir, profile.name, profile.family, cfg.name, seed, lr))
            if rec is None or rec.get("status") != "complete":
                return None
            metric = rec["selection_metric"]
            best = [p[metric] for p in rec["validation_curve"] if p["step"] == rec["best_step"]][0]
            vals.append(-best if metric == "val_loss" else best)
        scores[lr] = sum(vals) / len(vals)
    chosen = max(sorted(scores), key=lambda lr: scores[lr])
    return {
        "lr": chosen,
        "scores": {f"{k:g}": v for k, v in scores.items()},
        "metric": cfg.train.selection_metric,
    }


def final_plan(
    profile: Profile, configs: dict[str, ExperimentConfig], results_dir: Path
) -> tuple[list[PlannedRun], dict[str, Any]]:
    runs, chosen = [], {}
    for name, cfg in configs.items():
        choice = choose_lr(profile, cfg, results_dir)
        chosen[name] = choice
        if choice is None:
            continue
        for seed in profile.seeds:
            if seed not in profile.tune_seeds:
                path = run_path(results_dir, profile.name, profile.family, name, seed, choice["lr"])
                runs.append(PlannedRun(name, seed, choice["lr"], "final", path))
    return runs, chosen


def selected_lr_path(results_dir: Path, profile: Profile) -> Path:
    return Path(results_dir) / profile.name / profile.family / "selected_lr.json"


Executor = Callable[[PlannedRun], None]


def _in_process(
    profile: Profile, configs: dict[str, ExperimentConfig], results_dir: Path, progress: bool
) -> Executor:
    from experiments.train import run

    def execute(r: PlannedRun) -> None:
        run(
            configs[r.experiment],
            seed=r.seed,
            lr=r.lr,
            profile=profile.name,
            results_dir=results_dir,
            progress=progress,
        )

    return execute


def _subprocess(profile: Profile, results_dir: Path) -> Executor:
    def execute(r: PlannedRun) -> None:
        cmd = [sys.executable, "-m", "experiments", "run", "--family", profile.family, "--profile", profile.name,
               "--experiment", r.experiment, "--seed", str(r.seed), "--lr", repr(r.lr),
               "--results-dir", str(results_dir), "--no-progress"]  # fmt: skip
        subprocess.run(cmd, check=True)

    return execute


def execute_runs(
    runs: list[PlannedRun], executor: Executor, jobs: int, log: Callable[[str], None]
) -> dict[str, int]:
    """Run every run that is not complete; failures are recorded in their files and do not stop the sweep."""
    todo = [r for r in runs if r.status() != "complete"]
    counts = {"skipped": len(runs) - len(todo), "complete": 0, "failed": 0}

    def one(r: PlannedRun) -> None:
        log(f"run {r.experiment} seed={r.seed} lr={r.lr:g} ({r.stage})")
        try:
            executor(r)
        except Exception as e:  # recorded in the run's file by the runner (CalledProcessError included)
            log(f"  FAILED {r.experiment} seed={r.seed} lr={r.lr:g}: {e}")
        counts["complete" if r.status() == "complete" else "failed"] += 1

    if jobs <= 1:
        for r in todo:
            one(r)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, todo))
    return counts


def sweep(
    family: str,
    profile_name: str,
    results_dir: str | Path,
    *,
    jobs: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Tune (grid x tune seeds), choose each experiment's rate on validation, then run the other seeds."""
    results_dir = Path(results_dir)
    profile = load_profile(family, profile_name)
    configs = load_configs(profile)
    jobs = profile.jobs if jobs is None else jobs
    executor = (
        _in_process(profile, configs, results_dir, progress)
        if jobs <= 1
        else _subprocess(profile, results_dir)
    )
    summary = {"tune": execute_runs(tune_plan(profile, configs, results_dir), executor, jobs, log)}
    final, chosen = final_plan(profile, configs, results_dir)
    write_atomic(selected_lr_path(results_dir, profile), {"profile": profile.name, "selected": chosen})
    summary["final"] = execute_runs(final, executor, jobs, log)
    log(f"sweep {family}/{profile_name}: {json.dumps(summary)}")
    return summary


def plan_status(family: str, profile_name: str, results_dir: str | Path) -> list[dict[str, Any]]:
    """Every planned run with its status (for `list`); final-stage runs appear once their rate is chosen."""
    results_dir = Path(results_dir)
    profile = load_profile(family, profile_name)
    configs = load_configs(profile)
    final, chosen = final_plan(profile, configs, results_dir)
    rows = [
        {
            "experiment": r.experiment,
            "seed": r.seed,
            "lr": r.lr,
            "stage": r.stage,
            "status": r.status(),
            "path": str(r.path),
        }
        for r in tune_plan(profile, configs, results_dir) + final
    ]
    for name, choice in chosen.items():
        if choice is None:
            pending = [s for s in profile.seeds if s not in profile.tune_seeds]
            rows += [
                {
                    "experiment": name,
                    "seed": s,
                    "lr": None,
                    "stage": "final",
                    "status": "awaiting lr choice",
                    "path": "",
                }
                for s in pending
            ]
    return rows
