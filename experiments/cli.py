"""Command line: `python -m experiments {run,sweep,list,tables,budget,families} ...` (run from a checkout).

A user's mistake (unknown family, experiment, task, profile or method; a bad value; missing data; a corrupt
record) prints one line naming it and exits 2; `--debug` shows the traceback. A bug in the harness still
shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import NoReturn

DEFAULT_RESULTS = os.environ.get("RESULTS_DIR", "results")


class UsageError(ValueError):
    """A mistake in what the user typed."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a killed sweep), handled like Ctrl-C: runs record "interrupted"; the exit status is 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def check_results_dir(path: Path, *, must_exist: bool = False) -> None:
    """The results folder exists or can be created, and takes a file: checked before anything trains (a run's
    record is written after its training, so an unwritable folder would cost every run of a sweep)."""
    if must_exist and not path.is_dir():
        raise UsageError(f"--results-dir {path}: no such folder (no run records there)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        raise UsageError(
            f"--results-dir {path}: cannot create or write files there ({e.strerror or e})"
        ) from None


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v

    return parse


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line (its default prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _common(p: argparse.ArgumentParser, *, profile: bool = True) -> None:
    p.add_argument("--family", default="commonsense")
    if profile:
        p.add_argument("--profile", default="cpu")
    p.add_argument("--results-dir", default=DEFAULT_RESULTS, type=Path)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m experiments", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="train and evaluate one (experiment, task, seed, lr)")
    _common(p_run)
    p_run.add_argument("--experiment", required=True)
    p_run.add_argument("--task", default=None, help="for one-task-per-run families (glue): the task")
    p_run.add_argument("--seed", type=_int_at_least(0), default=0)
    p_run.add_argument("--lr", type=_positive_float, required=True)
    p_run.add_argument("--force", action="store_true", help="rerun even if a complete record exists")
    p_run.add_argument("--no-progress", action="store_true")

    p_sweep = sub.add_parser("sweep", help="run every missing or stale run of a profile (resumable)")
    _common(p_sweep)
    p_sweep.add_argument(
        "--jobs", type=_int_at_least(1), default=None, help="parallel runs (default: the profile's)"
    )
    p_sweep.add_argument("--no-progress", action="store_true")
    p_sweep.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local processes, or one SLURM job per run through submitit (experiments/accelerate/README.md)",
    )

    p_list = sub.add_parser("list", help="the plan of a profile: which runs exist, are missing or stale")
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
    p_budget.add_argument("--rank", type=_int_at_least(1), default=1)
    p_budget.add_argument(
        "--experiment", default=None, help="take the model and targets from this experiment"
    )

    p_verify = sub.add_parser(
        "verify", help="rerun a sample of committed runs into a scratch folder and compare"
    )
    _common(p_verify)
    p_verify.add_argument(
        "--scratch", type=Path, default=None, help="where reruns go (default: a temp folder)"
    )
    p_verify.add_argument("-n", type=_int_at_least(1), default=2, help="how many runs (default 2)")
    p_verify.add_argument(
        "--experiment", action="append", default=None, help="rerun these first (repeatable)"
    )

    p_analyze = sub.add_parser(
        "analyze", help="task-specific-direction analysis -> <results>/<profile>/<family>/analysis"
    )
    _common(p_analyze)
    p_analyze.add_argument("--train", action="store_true", help="also train (full FT vs LoRA picks; minutes)")

    p_fam = sub.add_parser("families", help="the experiment families, their metrics and profiles")
    p_fam.add_argument("--debug", action="store_true")
    p_fam.add_argument("--with-profile", default=None, help="only the families that have this profile")
    p_fam.add_argument("--names", action="store_true", help="print the names only (for scripts)")
    p_fam.add_argument("--family", default=None, help="only this family (an unknown name is an error)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():  # not in a job run on a worker thread
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _dispatch(args)
    except KeyboardInterrupt as e:
        if getattr(args, "debug", False):
            raise
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"interrupted ({signal.Signals(signum).name}): finished runs are kept and the interrupted ones are "
              "marked; run the same command again to resume", file=sys.stderr)  # fmt: skip
        return 128 + signum
    except Exception as e:
        if getattr(args, "debug", False) or not _is_user_error(e):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _is_user_error(e: Exception) -> bool:
    from baselines import UnknownMethodError
    from experiments.config import ConfigError
    from experiments.preflight import IncompatiblePackagesError
    from experiments.registry import UnknownFamilyError

    # FloatingPointError: a run diverged (non-finite loss); its record says "failed" and the next sweep retries it.
    return isinstance(e, (UsageError, ConfigError, UnknownFamilyError, UnknownMethodError, FileNotFoundError,
                          UnicodeDecodeError, FloatingPointError, IncompatiblePackagesError)) or type(e).__name__ in (
        "DataFormatError", "GlueFormatError", "CorruptRecordError")  # fmt: skip


def _one_line(e: Exception) -> str:
    return " ".join(" ".join([str(e), *getattr(e, "__notes__", ())]).split())


def _check_task(family: str, task: str | None, profile) -> None:
    from experiments.registry import get_family

    if get_family(family).one_task_per_run:
        if task is None:
            raise UsageError(
                f"{family} runs one task per run: pass --task (one of: {', '.join(profile.task_list)})"
            )
        if task not in profile.task_list:
            raise UsageError(
                f"task {task!r} is not in profile {profile.name} (known: {', '.join(profile.task_list)})"
            )
    elif task is not None:
        raise UsageError(f"{family} scores every task in each run; it takes no --task")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from experiments.config import load_experiment
        from experiments.preflight import preflight
        from experiments.profiles import load_profile
        from experiments.results import read_record, run_path
        from experiments.train import run

        profile = load_profile(args.family, args.profile)
        _check_task(args.family, args.task, profile)
        check_results_dir(args.results_dir)
        cfg = load_experiment(
            args.family,
            args.experiment,
            profile_overrides=profile.overrides,
            profile_source=profile.source,
            method_overrides=profile.method_overrides,
            task=args.task,
            task_overrides=(profile.tasks or {}).get(args.task) if args.task else None,
        )
        preflight([cfg])  # method, data, model and schedule, before anything trains
        path = run_path(
            args.results_dir, profile.name, args.family, args.experiment, args.seed, args.lr, args.task
        )
        existing = read_record(path)
        if existing and existing.get("status") == "complete" and not args.force:
            print(f"complete already: {path} (use --force to rerun)")
            return 0
        rec = run(cfg, seed=args.seed, lr=args.lr, profile=profile.name, results_dir=args.results_dir,
                  progress=not args.no_progress)  # fmt: skip
        print(f"{path}: {rec['test']['primary_metric']} {rec['test']['score']:.4f}")
    elif args.command == "sweep":
        from experiments.sweep import sweep

        check_results_dir(args.results_dir)
        summary = sweep(
            args.family,
            args.profile,
            args.results_dir,
            jobs=args.jobs,
            progress=not args.no_progress,
            executor=args.executor,
        )
        failed = summary["tune"]["failed"] + summary["final"]["failed"]
        return 1 if failed else 0
    elif args.command == "list":
        from experiments.sweep import plan_status

        rows = plan_status(args.family, args.profile, args.results_dir)
        estimates = _estimates(args.family, args.profile) if args.estimate else {}
        for r in rows:
            lr = "-" if r["lr"] is None else f"{r['lr']:g}"
            name = r["experiment"] + (f"/{r['task']}" if r["task"] else "")
            line = f"{r['status']:>20}  {r['stage']:5}  {name:<34} seed={r['seed']} lr={lr}"
            e = estimates.get((r["experiment"], r["task"]))
            if e:
                line += (f"  trainable={e['trainable']:,} steps={e['steps']:,} ~{e['memory_gb']:.0f} GB"
                         f"{'' if e['fits_80gb'] else ' (shard: FSDP/ZeRO)'} ~{e['gpu_hours']:.2f} GPU-h")  # fmt: skip
                for k in ("layout", "eval_every", "launch_update"):
                    if k in e:
                        line += f" {k}={e[k]}"
            print(line)
        done = sum(r["status"] == "complete" for r in rows)
        print(f"{done}/{len(rows)} complete")
        if args.estimate:
            if not estimates:
                print(f"no GPU estimate for {args.family} (it runs on the CPU)")
            else:
                total = sum(estimates[(r["experiment"], r["task"])]["gpu_hours"] for r in rows
                            if (r["experiment"], r["task"]) in estimates)  # fmt: skip
                assumptions = next(iter(estimates.values())).get("assumptions", "")
                print(f"estimated total: {total:.0f} GPU-hours; rough, assuming {assumptions}")
    elif args.command == "tables":
        from experiments.tables import write_tables

        check_results_dir(args.results_dir, must_exist=True)
        for path in write_tables(args.family, args.profile, args.results_dir):
            print(path)
    elif args.command == "budget":
        from experiments.budget_cli import print_budget

        print_budget(args.family, args.method, args.rank, args.experiment)
    elif args.command == "verify":
        import tempfile

        from experiments.verify import report, verify

        scratch = args.scratch or Path(tempfile.mkdtemp(prefix="loradash-verify-"))
        rows = verify(
            args.family, args.profile, args.results_dir, scratch, n=args.n, experiments=args.experiment
        )
        text = report(rows)
        (scratch / "verify.md").write_text(text)
        print(text + f"reruns and report in {scratch}")
    elif args.command == "analyze":
        from experiments.analysis import analyze

        for path in analyze(args.family, args.profile, args.results_dir, train=args.train):
            print(path)
    elif args.command == "families":
        from experiments.profiles import list_profiles
        from experiments.registry import available_families, get_family

        names = available_families()
        if args.family is not None:
            get_family(args.family)  # an unknown family: one line naming the known ones
            names = [args.family]
        if args.with_profile is not None and not any(args.with_profile in list_profiles(n)
                                                     for n in available_families()):  # fmt: skip
            known = sorted({p for n in available_families() for p in list_profiles(n)})
            raise UsageError(
                f"unknown profile {args.with_profile!r}: no family has it (known: {', '.join(known)})"
            )
        names = [n for n in names if args.with_profile in (None, *list_profiles(n))]
        if args.family is not None and not names:
            print(f"family {args.family} has no profile {args.with_profile!r}: skipped "
                  f"(its profiles: {', '.join(list_profiles(args.family))})", file=sys.stderr)  # fmt: skip
        if args.names:
            print(" ".join(names))
            return 0
        for name in names:
            fam = get_family(name)
            metrics = ", ".join(f"{m.name} ({'higher' if m.higher_is_better else 'lower'} is better)"
                                for m in fam.metrics.values())  # fmt: skip
            print(f"{name}: {fam.description}\n  primary metric: {fam.primary_metric}; metrics: {metrics}\n"
                  f"  profiles: {', '.join(list_profiles(name))}")  # fmt: skip
    return 0


def _estimates(family: str, profile_name: str) -> dict:
    from experiments.profiles import load_profile
    from experiments.registry import get_family
    from experiments.sweep import load_configs

    fam = get_family(family)
    out = {}
    for key, cfg in load_configs(load_profile(family, profile_name)).items():
        e = fam.estimate(cfg)
        if e is not None:
            out[key] = e
    return out


if __name__ == "__main__":
    sys.exit(main())
