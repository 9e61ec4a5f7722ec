"""Sweeps: the plan of runs a profile asks for, what is missing or stale, learning-rate choice, execution.

A run is done when its record says "complete" and its config hash equals the planned config's; anything else
(absent, failed, interrupted, stale) is run again, so a killed sweep resumes where it stopped and a complete,
current run is never repeated. A stale record (its config has changed since) is kept beside the new one as
`<name>.json.stale-<hash>`, never overwritten. The learning rate of each (experiment, task) is chosen on the
validation split from the tuning seeds' runs over the profile's grid; the other seeds then run at that rate.
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

from baselines import build_method
from experiments.cli import UsageError
from experiments.harness.config import ExperimentConfig, config_hash, load_experiment, with_overrides
from experiments.harness.preflight import preflight
from experiments.harness.profiles import Profile, load_profile
from experiments.harness.records import iter_records, read_record, run_path, write_atomic
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

    def status(self) -> str:
        """missing / complete / failed / interrupted / stale (complete, but for a config that has changed)."""
        rec = read_record(self.path)
        if rec is None:
            return "missing"
        if rec.get("status") == "complete" and rec.get("config_hash") != self.config_hash:
            return "stale"
        return str(rec.get("status"))

    def set_aside_stale(self) -> Path | None:
        """Move a stale record out of the way (kept beside the new one, never overwritten)."""
        if self.status() != "stale":
            return None
        rec = read_record(self.path) or {}
        dest = self.path.with_name(f"{self.path.name}.stale-{rec.get('config_hash') or 'unhashed'}")
        self.path.replace(dest)
        return dest


def load_configs(profile: Profile) -> dict[Key, ExperimentConfig]:
    return {
        (name, task): load_experiment(
            profile.family,
            name,
            profile_overrides=profile.overrides,
            profile_source=profile.source,
            method_overrides=profile.method_overrides,
            task=task,
            task_overrides=(profile.tasks or {}).get(task) if task is not None else None,
        )
        for name in profile.experiments
        for task in profile.task_list
    }


def planned_hash(cfg: ExperimentConfig, lr: float) -> str:
    cfg = with_overrides(cfg, train={"lr": float(lr)})
    return config_hash(cfg, dict(build_method(cfg.method.name, **cfg.method.params).params))


def _planned(profile: Profile, key: Key, cfg: ExperimentConfig, seed: int, lr: float, stage: str,
             results_dir: Path) -> PlannedRun:  # fmt: skip
    path = run_path(results_dir, profile.name, profile.family, key[0], seed, lr, key[1])
    return PlannedRun(key[0], key[1], seed, lr, stage, path, planned_hash(cfg, lr))


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


Executor = Callable[[PlannedRun], None]


def _in_process(
    profile: Profile, configs: dict[Key, ExperimentConfig], results_dir: Path, progress: bool
) -> Executor:
    from experiments.harness.train import run

    def execute(r: PlannedRun) -> None:
        run(configs[(r.experiment, r.task)], seed=r.seed, lr=r.lr, profile=profile.name,
            results_dir=results_dir, progress=progress)  # fmt: skip

    return execute


def _subprocess(profile: Profile, results_dir: Path) -> Executor:
    def execute(r: PlannedRun) -> None:
        cmd = [sys.executable, "-m", "experiments", "run", "--family", profile.family, "--profile", profile.name,
               "--experiment", r.experiment, "--seed", str(r.seed), "--lr", repr(r.lr),
               "--results-dir", str(results_dir), "--no-progress"]  # fmt: skip
        if r.task is not None:
            cmd += ["--task", r.task]
        subprocess.run(cmd, check=True)

    return execute


def _job(argv: list[str]) -> None:
    """One run in a cluster job (module level, so that submitit can pickle it by reference)."""
    from experiments.cli import main

    code = main(argv)
    if code:
        raise RuntimeError(f"`python -m experiments {' '.join(argv)}` exited {code}")


def _slurm(
    profile: Profile, configs: dict[Key, ExperimentConfig], results_dir: Path, cluster: str | None
) -> Executor:
    """One SLURM job per run through submitit: GPUs, memory and time from the family's estimate for the run
    (`list --estimate`; CPU-sized runs ask for no GPU), logs in `<results>/<profile>/<family>/slurm/`. The job
    runs `python -m experiments run`, so it writes its record (or a failed one) in the shared results folder.
    `cluster`: submitit's name ("slurm" by default on a cluster; "local" or "debug" in tests)."""
    try:
        import submitit
    except ImportError:
        raise UsageError("--executor slurm needs submitit: pip install 'loradash[bench]'") from None
    fam = get_family(profile.family)

    def execute(r: PlannedRun) -> None:
        est = fam.estimate(configs[(r.experiment, r.task)]) or {}
        hours = float(est.get("gpu_hours") or 1.0)
        executor = submitit.AutoExecutor(folder=results_dir / profile.name / profile.family / "slurm",
                                         cluster=cluster)  # fmt: skip
        executor.update_parameters(
            name=f"{profile.family}-{key_label((r.experiment, r.task))}-s{r.seed}",
            timeout_min=max(10, round(hours * 60 * 1.5)),  # the estimate is rough: half again as much
            gpus_per_node=1 if est else 0,
            mem_gb=max(16, round(float(est.get("memory_gb") or 0) * 1.5)),
            cpus_per_task=8 if est else 2,
        )
        argv = ["run", "--family", profile.family, "--profile", profile.name, "--experiment", r.experiment,
                "--seed", str(r.seed), "--lr", repr(r.lr), "--results-dir", str(results_dir), "--no-progress"]  # fmt: skip
        if r.task is not None:
            argv += ["--task", r.task]
        executor.submit(_job, argv).result()  # waits; a failed job raises (its record says why)

    return execute


def execute_runs(
    runs: list[PlannedRun], executor: Executor, jobs: int, log: Callable[[str], None]
) -> dict[str, int]:
    """Run every run that is not complete and current; failures are recorded in their files and do not stop
    the sweep."""
    todo = [r for r in runs if r.status() != "complete"]
    counts = {"skipped": len(runs) - len(todo), "complete": 0, "failed": 0}

    def one(r: PlannedRun) -> None:
        label = key_label((r.experiment, r.task))
        moved = r.set_aside_stale()
        if moved:
            log(f"stale record kept as {moved.name}")
        log(f"run {label} seed={r.seed} lr={r.lr:g} ({r.stage})")
        try:
            executor(r)
        except Exception as e:  # recorded in the run's file by the runner (CalledProcessError included)
            log(f"  FAILED {label} seed={r.seed} lr={r.lr:g}: {e}")
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
    executor: str = "local",
    cluster: str | None = None,
) -> dict[str, Any]:
    """Tune (grid x tune seeds), choose each rate on validation, then run the other seeds. `executor`: "local"
    (this process, or `jobs` subprocesses) or "slurm" (one cluster job per run through submitit, every missing
    run of a stage submitted at once; `cluster` is submitit's cluster name)."""
    if executor not in ("local", "slurm"):
        raise UsageError(f"unknown executor {executor!r} (known: local, slurm)")
    results_dir = Path(results_dir)
    profile = load_profile(family, profile_name)
    configs = load_configs(profile)
    preflight(configs.values())  # methods, data, model and schedule are checked before any run starts
    for path in iter_records(results_dir / profile.name / family):
        read_record(path)  # a corrupt record stops the sweep now, not after the runs before it in the plan
    jobs = profile.jobs if jobs is None else jobs
    if executor == "slurm":
        execute = _slurm(profile, configs, results_dir, cluster)
        # the cluster queues them: every missing run of a stage is submitted at once; submitit's "debug" cluster
        # runs each job in this process, where runs in parallel threads would share torch's global state
        jobs = 1 if cluster == "debug" else 256
    elif jobs <= 1:
        execute = _in_process(profile, configs, results_dir, progress)
    else:
        execute = _subprocess(profile, results_dir)
    summary = {"tune": execute_runs(tune_plan(profile, configs, results_dir), execute, jobs, log)}
    final, chosen = final_plan(profile, configs, results_dir)
    write_atomic(
        selected_lr_path(results_dir, profile),
        {"profile": profile.name, "selected": {key_label(k): v for k, v in chosen.items()}},
    )
    summary["final"] = execute_runs(final, execute, jobs, log)
    log(f"sweep {family}/{profile_name}: {json.dumps(summary)}")
    return summary


def plan_status(family: str, profile_name: str, results_dir: str | Path) -> list[dict[str, Any]]:
    """Every planned run with its status (for `list`); final-stage runs appear once their rate is chosen."""
    results_dir = Path(results_dir)
    profile = load_profile(family, profile_name)
    configs = load_configs(profile)
    final, chosen = final_plan(profile, configs, results_dir)
    rows = [
        {"experiment": r.experiment, "task": r.task, "seed": r.seed, "lr": r.lr, "stage": r.stage,
         "status": r.status(), "path": str(r.path)}
        for r in tune_plan(profile, configs, results_dir) + final
    ]  # fmt: skip
    for key, choice in chosen.items():
        if choice is None:
            pending = [s for s in profile.seeds if s not in profile.tune_seeds]
            rows += [
                {"experiment": key[0], "task": key[1], "seed": s, "lr": None, "stage": "final",
                 "status": "awaiting lr choice", "path": ""}
                for s in pending
            ]  # fmt: skip
    return rows
