"""Sweeps: run what the plan (`plan.py`) says is missing or stale, in this process, in subprocesses or as SLURM
jobs; then choose each rate and run the other seeds. Resumable: a killed sweep resumes where it stopped and a
complete, current run is never repeated. A stale record (its config has changed since) is kept beside the new
one as `<name>.json.stale-<hash>`, never overwritten. Each run holds its lock while it runs (`runlock.py`): sweeps
sharing a folder split the work, a run another live process holds is skipped with a note.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from experiments.harness.config import ExperimentConfig
from experiments.harness.errors import UsageError
from experiments.harness.plan import (
    Key,
    PlannedRun,
    final_plan,
    key_label,
    load_configs,
    planned_hash,
    selected_lr_path,
    tune_plan,
)
from experiments.harness.preflight import preflight
from experiments.harness.profiles import Profile, experiment_config, load_profile
from experiments.harness.records import check_results_dir, iter_records, read_record, run_path, write_atomic
from experiments.harness.registry import get_family
from experiments.harness.runlock import RunLockedError, holder

Executor = Callable[[PlannedRun], None]


def _in_process(
    profile: Profile, configs: dict[Key, ExperimentConfig], results_dir: Path, progress: bool
) -> Executor:
    from experiments.harness.train import run

    def execute(r: PlannedRun) -> None:
        run(
            configs[(r.experiment, r.task)],
            seed=r.seed,
            lr=r.lr,
            profile=profile.name,
            results_dir=results_dir,
            progress=progress,
            rerun_complete=False,  # finished by another sweep on this folder meanwhile: not again
        )

    return execute


def _subprocess(profile: Profile, results_dir: Path) -> Executor:
    def execute(r: PlannedRun) -> None:
        cmd = [
            sys.executable,
            "-m",
            "experiments",
            "run",
            "--family",
            profile.family,
            "--profile",
            profile.name,
            "--experiment",
            r.experiment,
            "--seed",
            str(r.seed),
            "--lr",
            repr(r.lr),
            "--results-dir",
            str(results_dir),
            "--no-progress",
            "--quiet",  # the sweep prints the run's line
        ]
        if r.task is not None:
            cmd += ["--task", r.task]
        subprocess.run(cmd, check=True)

    return execute


def check_task(family: str, task: str | None, profile: Profile) -> None:
    """`task` is one of the profile's for a one-task-per-run family, and absent for the others."""
    if get_family(family).one_task_per_run:
        if task is None:
            raise UsageError(
                f"{family} runs one task per run: pass --task (one of: {', '.join(map(str, profile.task_list))})"
            )
        if task not in profile.task_list:
            raise UsageError(
                f"task {task!r} is not in profile {profile.name} (known: {', '.join(map(str, profile.task_list))})"
            )
    elif task is not None:
        raise UsageError(f"{family} scores every task in each run; it takes no --task")


def run_one(
    *,
    family: str,
    profile: str,
    experiment: str,
    seed: int,
    lr: float,
    results_dir: Path,
    task: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, dict[str, Any] | None]:
    """One (experiment, task, seed, lr) of a profile, checked before it trains: what `python -m experiments run`
    and each SLURM job do. Returns the record's path and the new record (None: complete already, not forced)."""
    from experiments.harness.train import run

    prof = load_profile(family, profile)
    check_task(family, task, prof)
    check_results_dir(results_dir)
    cfg = experiment_config(prof, experiment, task)
    preflight([cfg])  # method, data, model and schedule, before anything trains
    path = run_path(results_dir, prof.name, family, experiment, seed, lr, task)
    planned = PlannedRun(experiment, task, seed, lr, "run", path, planned_hash(cfg, lr), family)
    if planned.status() == "complete" and not force:
        return path, None
    rec = run(cfg, seed=seed, lr=lr, profile=prof.name, results_dir=results_dir, progress=progress,
              rerun_complete=force)  # fmt: skip
    return path, rec


def _job(request: tuple[tuple[str, Any], ...]) -> None:
    """One run in a cluster job (module level, so that submitit can pickle it by reference); a failure raises
    in the job, and its record says why."""
    run_one(**dict(request))


def _slurm(
    profile: Profile, configs: dict[Key, ExperimentConfig], results_dir: Path, cluster: str | None
) -> Executor:
    """One SLURM job per run through submitit: GPUs, memory and time from the family's estimate for the run
    (`list --estimate`; CPU-sized runs ask for no GPU), logs in `<results>/<profile>/<family>/slurm/`. The job
    calls `run_one`, as `python -m experiments run` does, so it writes its record (or a failed one) in the shared results folder.
    `cluster`: submitit's name ("slurm" by default on a cluster; "local" or "debug" in tests)."""
    try:
        import submitit
    except ImportError:
        raise UsageError("--executor slurm needs submitit: pip install 'loradash[bench]'") from None
    fam = get_family(profile.family)

    def execute(r: PlannedRun) -> None:
        est = fam.estimate(configs[(r.experiment, r.task)]) or {}
        hours = float(est.get("gpu_hours") or 1.0)
        executor = submitit.AutoExecutor(
            folder=results_dir / profile.name / profile.family / "slurm", cluster=cluster
        )
        executor.update_parameters(
            name=f"{profile.family}-{key_label((r.experiment, r.task))}-s{r.seed}",
            timeout_min=max(10, round(hours * 60 * 1.5)),  # the estimate is rough: half again as much
            gpus_per_node=1 if est else 0,
            mem_gb=max(16, round(float(est.get("memory_gb") or 0) * 1.5)),
            cpus_per_task=8 if est else 2,
        )
        request = (
            ("family", profile.family),
            ("profile", profile.name),
            ("experiment", r.experiment),
            ("task", r.task),
            ("seed", r.seed),
            ("lr", r.lr),
            ("results_dir", results_dir),
            ("progress", False),
        )
        executor.submit(_job, request).result()  # waits; a failed job raises (its record says why)

    return execute


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _finished_line(r: PlannedRun, rec: dict[str, Any] | None) -> str:
    """What a finished run scored: its test score, its best validation and the wall time of this attempt."""
    label = f"{key_label((r.experiment, r.task))} seed={r.seed} lr={r.lr:g}"
    if rec is None or rec.get("status") != "complete":
        why = (rec or {}).get("error") or "; ".join(r.problems()) or "no record written"
        return f"FAILED {label}: {str(why).splitlines()[0][:160]}"
    test = rec.get("test", {})
    metric = rec.get("selection_metric")
    best = [p.get(metric) for p in rec.get("validation_curve", []) if p.get("step") == rec.get("best_step")]
    val = (
        f", {metric} {best[0]:.3f} at step {rec['best_step']}/{rec.get('max_steps')}"
        if best and best[0] is not None
        else ""
    )
    return f"{label}: {test.get('primary_metric')} {100 * test.get('score', float('nan')):.1f}{val}, {_duration(rec.get('wall_time_s', 0))}"


def execute_runs(
    runs: list[PlannedRun],
    executor: Executor,
    jobs: int,
    log: Callable[[str], None],
    stage: str = "",
    later: int = 0,
) -> dict[str, int]:
    """Run every run that is not complete and current; failures are recorded in their files and do not stop
    the sweep. One line per finished run: `[n/N stage]`, what it scored, its wall time and the sweep's ETA
    (mean wall time of the runs finished so far x the runs left, this stage's and `later` ones, / `jobs`)."""
    todo = []
    for r in runs:
        status = r.status()
        if status == "invalid":  # named here; the run sets it aside (never deletes it) and runs again
            log(f"invalid run record {r.path}: {'; '.join(r.problems())}")
        if status != "complete":
            todo.append(r)
    counts = {"skipped": len(runs) - len(todo), "complete": 0, "failed": 0, "locked": 0}
    lock = threading.Lock()
    walls: list[float] = []
    tag = f" {stage}" if stage else ""

    def report(r: PlannedRun, rec: dict[str, Any] | None) -> None:
        with lock:
            n = sum(counts[k] for k in ("complete", "failed", "locked"))
            if rec is not None and rec.get("wall_time_s"):
                walls.append(float(rec["wall_time_s"]))
            left = len(todo) - n + later
            eta = (
                f"; ETA {_duration(sum(walls) / len(walls) * left / max(1, min(jobs, left)))}"
                if walls and left
                else ""
            )
            log(f"[{n}/{len(todo)}{tag}] {_finished_line(r, rec)}{eta}")

    def one(r: PlannedRun) -> None:
        label = key_label((r.experiment, r.task))
        owner = holder(r.path)
        if owner is not None:
            with lock:
                counts["locked"] += 1
            log(
                f"skip {label} seed={r.seed} lr={r.lr:g}: being run by pid {owner.get('pid')} on {owner.get('host')}"
            )
            return
        error = None
        try:
            executor(r)
        except RunLockedError as e:  # taken by another sweep since the look above
            with lock:
                counts["locked"] += 1
            log(f"  skip {label} seed={r.seed} lr={r.lr:g}: {e}")
            return
        except Exception as e:  # recorded in the run's file by the runner (CalledProcessError included)
            if r.status() != "complete" and holder(r.path) is not None:  # a `run` subprocess found it locked
                with lock:
                    counts["locked"] += 1
                log(f"  skip {label} seed={r.seed} lr={r.lr:g}: being run by another process")
                return
            error = e
        complete = r.status() == "complete"
        rec = read_record(r.path) if r.path.is_file() else None
        if not complete and error is not None and not (rec or {}).get("error"):
            rec = {**(rec or {}), "status": "failed", "error": str(error)}
        with lock:
            counts["complete" if complete else "failed"] += 1
        report(r, rec)

    if jobs <= 1:
        for r in todo:
            one(r)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, todo))
    if not counts["locked"]:
        del counts["locked"]  # named only when another sweep held some
    return counts


def summary_table(family: str, profile: str, summary: dict[str, dict[str, int]]) -> str:
    cols = [
        "complete",
        "failed",
        "skipped",
        *(["locked"] if any("locked" in c for c in summary.values()) else []),
    ]
    lines = [f"sweep {family}/{profile}:", "  stage  " + "  ".join(f"{c:>8}" for c in cols)]
    for stage, c in summary.items():
        lines.append(f"  {stage:<5}  " + "  ".join(f"{c.get(k, 0):>8}" for k in cols))
    return "\n".join(lines)


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
    tune = tune_plan(profile, configs, results_dir)
    later = len(configs) * len(set(profile.seeds) - set(profile.tune_seeds))  # the final stage, for the ETA
    summary = {"tune": execute_runs(tune, execute, jobs, log, "tune", later)}
    final, chosen = final_plan(profile, configs, results_dir)
    write_atomic(
        selected_lr_path(results_dir, profile),
        {"profile": profile.name, "selected": {key_label(k): v for k, v in chosen.items()}},
    )
    summary["final"] = execute_runs(final, execute, jobs, log, "final")
    log(summary_table(family, profile_name, summary))
    return summary
