"""Experiment tracking (`train.report_to`): accelerate's trackers, fed by the loop with what it already has.

`report_to` is `none` (the default), `tensorboard`, `wandb`, `mlflow` or a list of them. It says how a run
executes, not what it computes: it is not in the config hash (a tracked rerun of a committed run is that run),
and the loop only reads values it has anyway (the step's loss and rate, the validation metrics, the method's
diagnostics summary, the test results), so a tracked run's results equal an untracked one's.

What is logged, at the optimizer step it belongs to:
- every step: `train/loss` (the mean over the step's micro-batches and processes) and `train/lr` (the base rate
  the step used: the record's `lrs`);
- every validation: `validation/<metric>` (the record's validation curve: `validation/val_loss`, ...) and
  `diagnostics/<name>`, the numbers of the method's diagnostics summary (what the tables show; LoRA-Dash: its
  launch step once it launched, the largest |lambda|, the scalars' summed post-launch rate, ...) for the model
  as it trains, so the launch shows up at the first validation after it;
- at the end (the run's last step): `test/score`, `test/<task>/<metric>`, `test/best_step` (the kept
  checkpoint's), `test/diagnostics/<name>` (the record's diagnostics, of the kept checkpoint) and the family's
  images (`Family.tracked_images`: DreamBooth's grid) through the trackers with an image API (TensorBoard, wandb).

Where: `<results>/<profile>/<family>/tracking/<experiment>/[<task>/]seed<S>_lr<LR>/` (TensorBoard's event files;
wandb's `wandb/` folder; MLflow's store `mlflow.db` and artifacts `mlartifacts/` one level up, in `tracking/`,
when `MLFLOW_TRACKING_URI` names none). No file there is named like a record (`records.iter_records` matches `seed<S>_lr<LR>.json` only), no
experiment may be called `tracking`, and `.gitignore` keeps the folders out of the committed results.
`tensorboard --logdir results/<profile>/<family>/tracking` shows a whole sweep. A resumed run continues its
TensorBoard run: what the killed attempt logged after its last checkpoint is purged (`purge_step`), and a run
started afresh purges every earlier attempt's steps.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
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


def tag(name: str) -> str:
    """A metric name every tracker takes (MLflow allows letters, digits, `_-./` and spaces): `max |lambda|` ->
    `max_lambda`, `dash term / layer output (median layer)` -> `dash_term_layer_output_median_layer`."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _hparam(v: Any) -> Any:
    """A config value as every tracker's hyper-parameter store takes it (TensorBoard: int, float, str, bool)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v, default=str, sort_keys=True)


class RunTracking:
    """The loop's side of `report_to` for one run: what it hands the Accelerator, and one call per thing logged.
    With `report_to: none` it is inactive: every call is a no-op and the loop computes nothing extra."""

    def __init__(self, names: tuple[str, ...], directory: Path | None, *, cfg: Any, seed: int, profile: str):
        self.names = names if directory is not None else ()
        self.directory = directory
        self.cfg, self.seed, self.profile = cfg, seed, profile
        self._accelerator: Any = None
        self._loss: Any = 0.0  # the current step's micro-batch losses, summed (a tensor once one is added)
        self._micro_batches = 0

    @property
    def active(self) -> bool:
        return bool(self.names)

    def _root(self) -> Path:
        """`<results>/<profile>/<family>/tracking`."""
        assert self.directory is not None
        return self.directory.parents[2 if self.cfg.task is not None else 1]

    @property
    def label(self) -> str:
        """`<experiment>/[<task>/]seed<S>_lr<LR>`: the run within its profile and family."""
        assert self.directory is not None
        return self.directory.relative_to(self._root()).as_posix()

    @property
    def project(self) -> str:
        """The wandb project and MLflow experiment: one per (family, profile), as results/<profile>/<family>/."""
        return f"loradash-{self.cfg.family}-{self.profile}"

    def accelerator_kwargs(self) -> dict[str, Any]:
        """`log_with` and `project_dir` for the run's Accelerator (nothing when inactive). TensorBoard is named:
        accelerate builds it in `init_trackers` as `<project_dir>/<project_name>/` (this run's folder), when the
        purge step is known. wandb and MLflow would take their project from that same project name (the run's
        folder name), so they are built here, each with the family's project and the run's name."""
        if not self.active:
            return {}
        assert self.directory is not None
        from accelerate.tracking import MLflowTracker, WandBTracker

        log_with: list[Any] = []
        for name in self.names:
            if name == "tensorboard":
                log_with.append(name)
            elif name == "wandb":
                log_with.append(WandBTracker(self.project, name=self.label, group=self.cfg.name,
                                             dir=str(self.directory), job_type=self.cfg.method.name))  # fmt: skip
            elif name == "mlflow":
                log_with.append(MLflowTracker(experiment_name=self.project, run_name=self.label, tags=self._tags(),
                                              logging_dir=self._mlflow_store()))  # fmt: skip
        self.directory.mkdir(parents=True, exist_ok=True)
        return {"log_with": log_with, "project_dir": str(self.directory.parent)}

    def _tags(self) -> dict[str, str]:
        return {"family": self.cfg.family, "profile": self.profile, "experiment": self.cfg.name,
                "task": str(self.cfg.task), "method": self.cfg.method.name, "seed": str(self.seed)}  # fmt: skip

    def _mlflow_store(self) -> str:
        """Where a new MLflow experiment keeps its artifacts. MLflow's default store is in the working folder
        (inside a checkout: untracked files, and every later record would say `dirty`); without
        MLFLOW_TRACKING_URI the family's tracking folder holds it, as SQLite (MLflow 3 refuses new file stores)."""
        root = self._root().resolve()
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            root.mkdir(parents=True, exist_ok=True)
            importlib.import_module("mlflow").set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        return (root / "mlartifacts").as_uri()

    def start(self, accelerator: Any, *, resumed_step: int, config_hash: str) -> None:
        """Start the trackers, with the run's identity and config as hyper-parameters. `resumed_step`: the step a
        resumed run continues from (0: from the start); TensorBoard hides what earlier attempts logged from the
        next step on (`purge_step`), so each step shows once."""
        if not self.active:
            return
        assert self.directory is not None
        self._accelerator = accelerator
        cfg = self.cfg
        config = {"family": cfg.family, "profile": self.profile, "experiment": cfg.name, "task": cfg.task,
                  "method": cfg.method.name, "seed": self.seed, "config_hash": config_hash}  # fmt: skip
        config |= {f"method.{k}": _hparam(v) for k, v in cfg.method.params.items()}
        config |= {f"train.{k}": _hparam(v) for k, v in cfg.to_dict()["train"].items()}
        accelerator.init_trackers(
            self.directory.name, config=config, init_kwargs={"tensorboard": {"purge_step": resumed_step + 1}}
        )
        started = sorted(t.name for t in accelerator.trackers)  # accelerate drops what it cannot import
        if accelerator.is_main_process and started != sorted(self.names):
            raise RuntimeError(f"report_to asked for {sorted(self.names)}, accelerate started {started}")

    def micro_batch(self, loss: Any) -> None:
        """One micro-batch's training loss (a tensor; detached, no sync)."""
        if self.active:
            self._loss = self._loss + loss.detach()
            self._micro_batches += 1

    def step(self, step: int, *, lr: float) -> None:
        """One optimizer step: the mean loss of its micro-batches (and over processes: every process calls this)
        and the base rate it used."""
        if not self.active:
            return
        loss = self._accelerator.reduce(self._loss / self._micro_batches, reduction="mean")
        self._loss, self._micro_batches = 0.0, 0
        self._accelerator.log({"train/loss": float(loss), "train/lr": float(lr)}, step=step)

    def validation(self, step: int, metrics: Mapping[str, float], *, method: Any, model: Any,
                   lrs: list[float]) -> None:  # fmt: skip
        """A validation's metrics, and the method's diagnostics summary as it stands (measured on the model now)."""
        if not self.active or not self._accelerator.is_main_process:
            return
        values = {f"validation/{k}": float(v) for k, v in metrics.items() if _number(v)}
        values |= self._summary(method, method.diagnostics(model, lrs=lrs))
        self._accelerator.log(values, step=step)

    @staticmethod
    def _summary(method: Any, diagnostics: Mapping[str, Any], prefix: str = "diagnostics") -> dict[str, float]:  # fmt: skip
        summary, _ = type(method).summarize_diagnostics(diagnostics)
        return {f"{prefix}/{tag(k)}": float(v) for k, v in summary.items() if _number(v)}

    def test(self, step: int, test: Mapping[str, Any], *, best_step: int, metrics: Iterable[str], method: Any,
             diagnostics: Mapping[str, Any], images: Mapping[str, Any]) -> None:  # fmt: skip
        """The test results of the kept checkpoint (`score`, each task's declared metrics, the checkpoint's step),
        its diagnostics summary as the record holds it (`test/diagnostics/...`: the training-time curve
        `diagnostics/...` is the model as it trained) and the family's images (name -> PIL image), logged at the
        run's last step."""
        if not self.active or not self._accelerator.is_main_process:
            return
        values = {"test/score": float(test["score"]), "test/best_step": best_step}
        for task, r in test["per_task"].items():
            values |= {f"test/{task}/{m}": float(r[m]) for m in metrics if _number(r.get(m))}
        values |= self._summary(method, diagnostics, prefix="test/diagnostics")
        self._accelerator.log(values, step=step)
        if images:
            import numpy as np

            # [1, H, W, 3] each
            arrays = {f"test/{k}": np.asarray(im.convert("RGB"))[None] for k, im in images.items()}
            for tracker in self._accelerator.trackers:
                if hasattr(tracker, "log_images"):  # MLflow's tracker has none
                    tracker.log_images(arrays, step=step, **TRACKERS[tracker.name].image_kwargs)

    def end(self) -> None:
        """Close the trackers (TensorBoard flushes its files). Not `Accelerator.end_training`, which also destroys
        the process group: a launched process may still need it (another run of an in-process sweep)."""
        if self._accelerator is not None:
            for tracker in self._accelerator.trackers:
                tracker.finish()
            self._accelerator = None
