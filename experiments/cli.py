"""Command line: `python -m experiments <command> ...` (run from a checkout), a table of command -> function.

Each command is a function of the parsed options, registered with `@command` beside the options it takes; the
work is done by the harness, the report and the analysis, never here. A user's mistake (any `UserError`: an
unknown family, experiment, task, profile or method; a bad value; missing data; a corrupt record) prints one
line naming it and exits 2; `--debug` shows the traceback. A bug in the harness still shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from baselines.errors import UserError
from experiments.analysis.budget import print_budget
from experiments.analysis.tsd import analyze
from experiments.analysis.verify import report, verify
from experiments.harness.errors import UsageError
from experiments.harness.plan import load_configs, plan_status
from experiments.harness.profiles import list_profiles, load_profile
from experiments.harness.records import check_results_dir
from experiments.harness.registry import available_families, get_family
from experiments.harness.sweep import run_one, sweep
from experiments.report.site import SITE, write_site
from experiments.report.tables import write_tables

DEFAULT_RESULTS = os.environ.get("RESULTS_DIR", "results")


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a killed sweep), handled like Ctrl-C: runs record "interrupted"; the exit status is 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _int_at_least(minimum: int, below: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        if below is not None and v >= below:
            raise argparse.ArgumentTypeError(f"must be < {below}, got {v}")
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


@dataclass(frozen=True)
class Command:
    func: Callable[[argparse.Namespace], int | None]
    help: str
    options: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]
    profile: bool  # takes --family, --profile, --results-dir (False: --family and --results-dir only)
    common: bool  # takes the common options at all


COMMANDS: dict[str, Command] = {}


def opt(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One option of a command, as argparse's add_argument takes it."""
    return flags, kwargs


# progress bars: on a terminal by default, off in logs and pipes; either flag decides
PROGRESS_OPTS = (
    opt("--progress", action="store_true", help="show progress bars even when stderr is not a terminal"),
    opt("--no-progress", action="store_true", help="no progress bars"),
)


def _progress(args: argparse.Namespace) -> bool:
    return bool(args.progress or (not args.no_progress and sys.stderr.isatty()))


def command(
    name: str,
    help: str,
    *options: tuple[tuple[str, ...], dict[str, Any]],
    profile: bool = True,
    common: bool = True,
) -> Callable:
    """Register the decorated function as the command `name` with these options (a duplicate name raises)."""

    def register(
        func: Callable[[argparse.Namespace], int | None],
    ) -> Callable[[argparse.Namespace], int | None]:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is already registered")
        COMMANDS[name] = Command(func, help, options, profile, common)
        return func

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m experiments", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help)
        if cmd.common:
            _common(p, profile=cmd.profile)
        else:
            p.add_argument("--debug", action="store_true")
        for flags, kwargs in cmd.options:
            p.add_argument(*flags, **kwargs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():  # not in a job run on a worker thread
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return COMMANDS[args.command].func(args) or 0
    except KeyboardInterrupt as e:
        if getattr(args, "debug", False):
            raise
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(
            f"interrupted ({signal.Signals(signum).name}): finished runs are kept and the interrupted ones are "
            "marked; run the same command again to resume",
            file=sys.stderr,
        )
        return 128 + signum
    except UserError as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: Exception) -> str:
    return " ".join(" ".join([str(e), *getattr(e, "__notes__", ())]).split())


# -- the commands ----------------------------------------------------------------------------------------------


@command(
    "run",
    "train and evaluate one (experiment, task, seed, lr)",
    opt("--experiment", required=True),
    opt("--task", default=None, help="for one-task-per-run families (glue): the task"),
    opt("--seed", type=_int_at_least(0, below=2**32), default=0),  # numpy and torch seeds: < 2**32
    opt("--lr", type=_positive_float, required=True),
    opt("--force", action="store_true", help="rerun even if a complete record exists"),
    *PROGRESS_OPTS,
    opt("--quiet", action="store_true", help=argparse.SUPPRESS),  # the sweep prints its own line per run
)
def cmd_run(args: argparse.Namespace) -> int:
    path, rec = run_one(
        family=args.family,
        profile=args.profile,
        experiment=args.experiment,
        task=args.task,
        seed=args.seed,
        lr=args.lr,
        results_dir=args.results_dir,
        force=args.force,
        progress=_progress(args),
    )
    if args.quiet:
        return 0
    if rec is None:
        print(f"complete already: {path} (use --force to rerun)")
    else:
        print(f"{path}: {rec['test']['primary_metric']} {rec['test']['score']:.4f}")
    return 0


@command(
    "sweep",
    "run every missing or stale run of a profile (resumable)",
    opt("--jobs", type=_int_at_least(1), default=None, help="parallel runs (default: the profile's)"),
    *PROGRESS_OPTS,
    opt(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local processes, or one SLURM job per run through submitit (experiments/accelerate/README.md)",
    ),
)
def cmd_sweep(args: argparse.Namespace) -> int:
    check_results_dir(args.results_dir)
    summary = sweep(
        args.family,
        args.profile,
        args.results_dir,
        jobs=args.jobs,
        progress=_progress(args),
        executor=args.executor,
    )
    failed = summary["tune"]["failed"] + summary["final"]["failed"]
    return 1 if failed else 0


@command(
    "list",
    "the plan of a profile: which runs exist, are missing or stale",
    opt("--estimate", action="store_true", help="add GPU memory and GPU-hours (full-scale models)"),
)
def cmd_list(args: argparse.Namespace) -> int:
    rows = plan_status(args.family, args.profile, args.results_dir)
    for r in rows:
        if r["problems"]:  # one line per record that does not check, naming the file
            print(f"invalid run record {r['path']}: {'; '.join(r['problems'])}", file=sys.stderr)
    estimates = _estimates(args.family, args.profile) if args.estimate else {}
    for r in rows:
        lr = "-" if r["lr"] is None else f"{r['lr']:g}"
        name = r["experiment"] + (f"/{r['task']}" if r["task"] else "")
        line = f"{r['status']:>20}  {r['stage']:5}  {name:<34} seed={r['seed']} lr={lr}"
        e = estimates.get((r["experiment"], r["task"]))
        if e:
            line += (
                f"  trainable={e['trainable']:,} steps={e['steps']:,} ~{e['memory_gb']:.0f} GB"
                f"{'' if e['fits_80gb'] else ' (shard: FSDP/ZeRO)'} ~{e['gpu_hours']:.2f} GPU-h"
            )
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
            total = sum(
                estimates[(r["experiment"], r["task"])]["gpu_hours"]
                for r in rows
                if (r["experiment"], r["task"]) in estimates
            )
            assumptions = next(iter(estimates.values())).get("assumptions", "")
            print(f"estimated total: {total:.0f} GPU-hours; rough, assuming {assumptions}")
    return 0


def _estimates(family: str, profile_name: str) -> dict:
    fam = get_family(family)
    out = {}
    for key, cfg in load_configs(load_profile(family, profile_name)).items():
        e = fam.estimate(cfg)
        if e is not None:
            out[key] = e
    return out


@command("tables", "regenerate tables, plots and the verdict, then the results browser, from the run records")
def cmd_tables(args: argparse.Namespace) -> int:
    check_results_dir(args.results_dir, must_exist=True)
    for path in write_tables(args.family, args.profile, args.results_dir):
        print(path)
    # the browser covers every folder with tables, so that one `make tables` loop leaves it whole
    site = write_site(args.results_dir)
    print(f"{site[0]} (results browser: {len(site) - 1} more files under {args.results_dir / SITE})")
    return 0


@command(
    "budget",
    "ranks of other methods at 1x, 8x, 16x a method's parameter count",
    opt("--method", default="loradash"),
    opt("--rank", type=_int_at_least(1), default=1),
    opt("--experiment", default=None, help="take the model and targets from this experiment"),
    profile=False,
)
def cmd_budget(args: argparse.Namespace) -> int:
    print_budget(args.family, args.method, args.rank, args.experiment)
    return 0


@command(
    "verify",
    "rerun a sample of committed runs into a scratch folder and compare",
    opt("--scratch", type=Path, default=None, help="where reruns go (default: a temp folder)"),
    opt("-n", type=_int_at_least(1), default=2, help="how many runs (default 2)"),
    opt("--experiment", action="append", default=None, help="rerun these first (repeatable)"),
)
def cmd_verify(args: argparse.Namespace) -> int:
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="loradash-verify-"))
    rows = verify(args.family, args.profile, args.results_dir, scratch, n=args.n, experiments=args.experiment)
    text = report(rows)
    (scratch / "verify.md").write_text(text)
    print(text + f"reruns and report in {scratch}")
    return 0


@command(
    "analyze",
    "task-specific-direction analysis -> <results>/<profile>/<family>/analysis",
    opt("--train", action="store_true", help="also train (full FT vs LoRA picks; minutes)"),
)
def cmd_analyze(args: argparse.Namespace) -> int:
    for path in analyze(args.family, args.profile, args.results_dir, train=args.train):
        print(path)
    return 0


@command(
    "families",
    "the experiment families, their metrics and profiles",
    opt("--with-profile", default=None, help="only the families that have this profile"),
    opt("--names", action="store_true", help="print the names only (for scripts)"),
    opt("--family", default=None, help="only this family (an unknown name is an error)"),
    common=False,
)
def cmd_families(args: argparse.Namespace) -> int:
    names = available_families()
    if args.family is not None:
        get_family(args.family)  # an unknown family: one line naming the known ones
        names = [args.family]
    if args.with_profile is not None and not any(
        args.with_profile in list_profiles(n) for n in available_families()
    ):
        known = sorted({p for n in available_families() for p in list_profiles(n)})
        raise UsageError(
            f"unknown profile {args.with_profile!r}: no family has it (known: {', '.join(known)})"
        )
    names = [n for n in names if args.with_profile in (None, *list_profiles(n))]
    if args.family is not None and not names:
        print(
            f"family {args.family} has no profile {args.with_profile!r}: skipped "
            f"(its profiles: {', '.join(list_profiles(args.family))})",
            file=sys.stderr,
        )
    if args.names:
        print(" ".join(names))
        return 0
    for name in names:
        fam = get_family(name)
        metrics = ", ".join(
            f"{m.name} ({'higher' if m.higher_is_better else 'lower'} is better)"
            for m in fam.metrics.values()
        )
        print(
            f"{name}: {fam.description}\n  primary metric: {fam.primary_metric}; metrics: {metrics}\n"
            f"  profiles: {', '.join(list_profiles(name))}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
