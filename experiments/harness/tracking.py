"""Experiment tracking (`train.report_to`): accelerate's trackers, fed by the loop with what it already has.

`report_to` is `none` (the default), `tensorboard`, `wandb`, `mlflow` or a list of them. It says how a run
executes, not what it computes: it is not in the config hash (a tracked rerun of a committed run is that run),
and the loop only reads values it has anyway (the step's loss and rate, the validation metrics, the method's
diagnostics summary, the test results), so a tracked run's record equals an untracked one's.

Where: `<results>/<profile>/<family>/tracking/<experiment>/[<task>/]seed<S>_lr<LR>/` (TensorBoard's event files;
wandb's `wandb/` folder; MLflow's `mlruns/` store one level up, in `tracking/`, when `MLFLOW_TRACKING_URI` names
none). No file there is named like a record (`records.iter_records` matches `seed<S>_lr<LR>.json` only), no
experiment may be called `tracking`, and `.gitignore` keeps the folders out of the committed results.
`tensorboard --logdir results/<profile>/<family>/tracking` shows a whole sweep. A resumed run continues its
TensorBoard run: what the killed attempt logged after its last checkpoint is purged (`purge_step`), and a run
started afresh purges every earlier attempt's steps.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.harness.errors import MissingPackageError

NONE = "none"
FOLDER = "tracking"  # <results>/<profile>/<family>/tracking/


@dataclass(frozen=True)
class Tracker:
    """One value of `report_to`: accelerate's tracker of that name."""

    # the tracker works when any of these imports (what accelerate's tracker imports)
    modules: tuple[str, ...]
    package: str  # what `pip install` installs
    image_kwargs: Mapping[str, Any] = field(default_factory=dict)  # for its `log_images`, when it has one


TRACKERS: dict[str, Tracker] = {
    # accelerate's TensorBoardTracker writes through torch.utils.tensorboard (needs `tensorboard`), else tensorboardX
    "tensorboard": Tracker(
        ("torch.utils.tensorboard", "tensorboardX"), "tensorboard", {"dataformats": "NHWC"}
    ),
    "wandb": Tracker(("wandb",), "wandb"),
    "mlflow": Tracker(("mlflow",), "mlflow"),
}


def requested(report_to: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The trackers `report_to` names, in order, without `none`."""
    names = (report_to,) if isinstance(report_to, str) else tuple(report_to)
    return tuple(n for n in names if n != NONE)


def problem(report_to: str | tuple[str, ...] | list[str]) -> str | None:
    """What is wrong with a `report_to` value (None: nothing)."""
    names = (report_to,) if isinstance(report_to, str) else tuple(report_to)
    known = ", ".join([NONE, *TRACKERS])
    for n in names:
        if n != NONE and n not in TRACKERS:
            return f"unknown tracker {n!r} (known: {known})"
    if NONE in names and len(names) > 1:
        return f"{NONE!r} cannot be listed with trackers, got {list(names)}"
    if len(set(names)) < len(names):
        return f"a tracker is listed twice: {list(names)}"
    return None


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def check_installed(names: Iterable[str]) -> None:
    """Raise MissingPackageError (one line: the package and the pip command) for the first tracker whose package
    does not import; called by the preflight, before anything trains (accelerate itself would silently drop it)."""
    for name in dict.fromkeys(names):
        tracker = TRACKERS[name]
        if not any(_imports(m) for m in tracker.modules):
            raise MissingPackageError(
                f"train.report_to: {name} needs the package {tracker.package}, which is not installed: "
                f"pip install {tracker.package} (or drop {name} from report_to)"
            )


def logs_dir(record_path: str | Path, *, task: str | None) -> Path:
    """`<results>/<profile>/<family>/tracking/<experiment>/[<task>/]seed<S>_lr<LR>/` for the record at
    `record_path` (`<results>/<profile>/<family>/<experiment>/[<task>/]seed<S>_lr<LR>.json`)."""
    p = Path(record_path)
    parts = [p.parent.parent.name, p.parent.name] if task is not None else [p.parent.name]
    family_dir = p.parents[len(parts)]
    return family_dir.joinpath(FOLDER, *parts, p.stem)
