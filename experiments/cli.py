"""Command line: `python -m experiments {run,sweep,list,tables,budget} ...` (also `loradash-exp`)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

DEFAULT_RESULTS = os.environ.get("RESULTS_DIR", "results")


def _interrupt(signum, frame):  # SIGTERM (a killed sweep) is handled like Ctrl-C: runs record "interrupted"
    raise KeyboardInterrupt(f"signal {signum}")


def _common(p: argparse.ArgumentParser, *, profile: bool = True) -> None:
    p.add_argument("--family", default="commonsense")
    if profile:
        p.add_argument("--profile", default="cpu")
    p.add_argument("--results-dir", default=DEFAULT_RESULTS, type=Path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="train and evaluate one (experiment, seed, lr)")
    _common(p_run)
    p_run.add_argument("--experiment", required=True)
    p_run.add_argument("--seed", type=int, default=0)
    p_run.add_argument("--lr", type=float, required=True)
    p_run.add_argument("--force", action="store_true", help="rerun even if a complete record exists")
    p_run.add_argument("--no-progress", action="store_true")

    p_sweep = sub.add_parser("sweep", help="run every missing run of a profile (resumable)")
    _common(p_sweep)
    p_sweep.add_argument("--jobs", type=int, default=None, help="parallel runs (default: the profile's)")
    p_sweep.add_argument("--no-progress", action="store_true")

    p_list = sub.add_parser("list", help="the plan of a profile: which runs exist and which are missing")
    _common(p_list)
    p_list.add_argument(
        "--estimate", action="store_true", help="add GPU memory and GPU-hours (full-scale models)"
    )

    p_tables = sub.add_parser("tables", help="regenerate tables, plots and the verdict from the run records")
    _common(p_tables)

    p_budget = sub.add_parser(
        "budget", help="ranks of other methods at 1x, 8x, 16x a method's parameter count"
    )
    _common(p_budget, profile=False)
    p_budget.add_argument("--method", default="loradash")
    p_budget.add_argument("--rank", type=int, default=1)
    p_budget.add_argument(
        "--experiment", default=None, help="take the model and targets from this experiment"
    )

    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)

    if args.command == "run":
        from experiments.config import load_experiment
        from experiments.profiles import load_profile
        from experiments.results import read_record, run_path
        from experiments.train import run

        profile = load_profile(args.family, args.profile)
        cfg = load_experiment(
            args.family,
            args.experiment,
            profile_overrides=profile.overrides,
            profile_source=profile.source,
            method_overrides=profile.method_overrides,
        )
        path = run_path(args.results_dir, profile.name, args.family, args.experiment, args.seed, args.lr)
        existing = read_record(path)
        if existing and existing.get("status") == "complete" and not args.force:
            print(f"complete already: {path} (use --force to rerun)")
            return 0
        rec = run(cfg, seed=args.seed, lr=args.lr, profile=profile.name, results_dir=args.results_dir,
                  progress=not args.no_progress)  # fmt: skip
        print(f"{path}: mean accuracy {rec['test']['mean_accuracy']:.4f}")
    elif args.command == "sweep":
        from experiments.sweep import sweep

        summary = sweep(
            args.family, args.profile, args.results_dir, jobs=args.jobs, progress=not args.no_progress
        )
        failed = summary["tune"]["failed"] + summary["final"]["failed"]
        return 1 if failed else 0
    elif args.command == "list":
        from experiments.sweep import plan_status

        rows = plan_status(args.family, args.profile, args.results_dir)
        estimates = _estimates(args.family, args.profile) if args.estimate else {}
        for r in rows:
            lr = "-" if r["lr"] is None else f"{r['lr']:g}"
            line = f"{r['status']:>20}  {r['stage']:5}  {r['experiment']:<28} seed={r['seed']} lr={lr}"
            if r["experiment"] in estimates:
                e = estimates[r["experiment"]]
                line += (f"  trainable={e['trainable']:,} steps={e['steps']:,} ~{e['memory_gb']:.0f} GB"
                         f"{'' if e['fits_80gb'] else ' (shard: FSDP/ZeRO)'} ~{e['gpu_hours']:.1f} GPU-h")  # fmt: skip
            print(line)
        done = sum(r["status"] == "complete" for r in rows)
        print(f"{done}/{len(rows)} complete")
        if estimates:
            from experiments.estimate import ASSUMPTIONS

            total = sum(estimates[r["experiment"]]["gpu_hours"] for r in rows if r["experiment"] in estimates)
            print(f"estimated total: {total:.0f} H100 GPU-hours; rough, assuming {ASSUMPTIONS}")
    elif args.command == "tables":
        from experiments.tables import write_tables

        for path in write_tables(args.family, args.profile, args.results_dir):
            print(path)
    elif args.command == "budget":
        from experiments.budget_cli import print_budget

        print_budget(args.family, args.method, args.rank, args.experiment)
    return 0


def _estimates(family: str, profile_name: str) -> dict[str, dict]:
    from experiments.estimate import estimate_run
    from experiments.profiles import load_profile
    from experiments.sweep import load_configs

    return {name: estimate_run(cfg) for name, cfg in load_configs(load_profile(family, profile_name)).items()}


if __name__ == "__main__":
    sys.exit(main())
