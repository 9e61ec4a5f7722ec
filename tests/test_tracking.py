"""`train.report_to`: runs logged through accelerate's trackers, read back with TensorBoard's own reader.

Real smoke runs of the commonsense family (4 optimizer steps of 4, validation at steps 2 and 4, LoRA-Dash
launching after step 2) with `report_to: tensorboard`: the scalars, their steps and values against the run's
record and schedule; the record of a tracked run equals an untracked one's and its config hash too; a killed
and resumed run shows each step once; the logs sit where no record is looked for and git ignores them. A tracker
whose package is missing is one line before anything trains (tests/test_errors.py checks the CLI's line).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.commonsense.family import CommonsenseRun
from experiments.harness import checkpoint as ckpt
from experiments.harness import tracking
from experiments.harness import train as train_mod
from experiments.harness.config import ConfigError, config_hash, load_experiment, with_overrides
from experiments.harness.errors import MissingPackageError
from experiments.harness.preflight import preflight
from experiments.harness.profiles import experiment_config, load_profile
from experiments.harness.records import iter_records, run_path
from experiments.harness.schedule import lr_scheduler

REPO = Path(__file__).resolve().parent.parent
SAME = ("test", "validation_curve", "best_step", "examples_seen", "max_steps", "diagnostics", "param_counts")
SMOKE = load_profile("commonsense", "smoke")  # 4 steps of 4, validation every 2, LoRA-Dash t = 2


def smoke_config(experiment: str, **train):
    return with_overrides(experiment_config(SMOKE, experiment), train=train)


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the TensorBoard run in `folder`."""
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_lrs(cfg, steps: int) -> list[float]:
    """The base rate of each optimizer step under the run's schedule."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.train.lr)
    sched = lr_scheduler(opt, cfg, steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def tracked_run(tmp_path: Path, experiment: str, **train):
    cfg = smoke_config(experiment, report_to="tensorboard", **train)
    rec = train_mod.run(cfg, seed=0, lr=1e-3, profile="smoke", results_dir=tmp_path, progress=False)
    path = run_path(tmp_path, "smoke", "commonsense", experiment, 0, 1e-3)
    return cfg, rec, tracking.logs_dir(path, task=None)


def test_report_to_is_not_in_the_config_hash():
    """How a run executes, not what it computes: committed records stay current when it is set."""
    cfg = experiment_config(SMOKE, "loradash-r1")
    base = config_hash(cfg)
    for value in ("tensorboard", ("tensorboard", "wandb"), "none"):
        assert config_hash(with_overrides(cfg, train={"report_to": value})) == base
    # what a run computes still counts
    assert config_hash(with_overrides(cfg, train={"max_steps": 5})) != base


def test_report_to_takes_a_name_or_a_list_and_names_what_is_wrong():
    assert tracking.requested("none") == () and tracking.requested("wandb") == ("wandb",)
    assert tracking.requested(("tensorboard", "mlflow")) == ("tensorboard", "mlflow")
    assert tracking.problem("tensorboard") is None and tracking.problem(["tensorboard", "wandb"]) is None
    assert "unknown tracker 'tensorbord'" in tracking.problem("tensorbord")
    assert "cannot be listed with trackers" in tracking.problem(["none", "wandb"])
    assert "listed twice" in tracking.problem(["wandb", "wandb"])
    cfg = load_experiment("commonsense", "lora-r1", profile_overrides={"train": {"report_to": ["tensorboard"]}},
                          profile_source=SMOKE.source)  # fmt: skip
    # a YAML list becomes a tuple (configs are frozen, hashable)
    assert cfg.train.report_to == ("tensorboard",)
    with pytest.raises(ConfigError, match=r"train\.report_to: unknown tracker 'wandbb'"):
        load_experiment("commonsense", "lora-r1", profile_overrides={"train": {"report_to": "wandbb"}},
                        profile_source=SMOKE.source)  # fmt: skip


def test_the_name_tracking_is_reserved_for_the_logs():
    with pytest.raises(ConfigError, match="reserved for the trackers' logs"):
        load_experiment("commonsense", "tracking")


def test_the_logs_of_a_run_sit_in_the_family_tracking_folder():
    glue = run_path("res", "cpu", "glue", "lora-r2", 0, 1e-3, "sst2")
    assert tracking.logs_dir(glue, task="sst2") == Path("res/cpu/glue/tracking/lora-r2/sst2/seed0_lr1e-3")
    mixed = run_path("res", "cpu", "commonsense", "lora-r1", 1, 2e-4)
    assert tracking.logs_dir(mixed, task=None) == Path("res/cpu/commonsense/tracking/lora-r1/seed1_lr2e-4")


def test_metric_names_are_ones_every_tracker_takes():
    assert tracking.tag("max |lambda|") == "max_lambda"
    assert tracking.tag("dash term / layer output (median layer)") == "dash_term_layer_output_median_layer"
    assert tracking.tag("launch step") == "launch_step"


@pytest.mark.parametrize(
    "names,hidden,package",
    [(("wandb",), ("wandb",), "wandb"), (("mlflow",), ("mlflow",), "mlflow"),
     (("tensorboard",), ("torch.utils.tensorboard", "tensorboardX"), "tensorboard")],
)  # fmt: skip
def test_a_missing_tracker_is_one_line_with_its_pip_command(monkeypatch, names, hidden, package):
    for module in hidden:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(MissingPackageError) as info:
        tracking.check_installed(names)
    message = str(info.value)
    assert "\n" not in message and f"needs the package {package}" in message
    assert f"pip install {package}" in message
    # the preflight finds it before anything else is checked or built
    cfg = smoke_config("lora-r1", report_to=list(names))
    with pytest.raises(MissingPackageError, match=f"pip install {package}"):
        preflight([cfg])


def test_a_tracked_run_logs_every_step_validation_and_test_and_computes_the_same_record(tmp_path):
    cfg, rec, logs = tracked_run(tmp_path / "tracked", "lora-r1")
    untracked = train_mod.run(smoke_config("lora-r1"), seed=0, lr=1e-3, profile="smoke",
                              results_dir=tmp_path / "plain", progress=False)  # fmt: skip
    for key in SAME:
        assert rec[key] == untracked[key], key
    assert rec["config_hash"] == untracked["config_hash"]
    assert not (tmp_path / "plain" / "smoke" / "commonsense" / tracking.FOLDER).exists()

    s = scalars(logs)
    steps = list(range(1, rec["max_steps"] + 1))
    assert [st for st, _ in s["train/loss"]] == steps
    assert all(v > 0 for _, v in s["train/loss"])
    assert [st for st, _ in s["train/lr"]] == steps
    assert [v for _, v in s["train/lr"]] == pytest.approx(expected_lrs(cfg, rec["max_steps"]), rel=1e-6)
    curve = rec["validation_curve"]
    assert [p["step"] for p in curve] == [2, 4]
    for metric in CommonsenseRun.validation_metrics:
        assert s[f"validation/{metric}"] == [(p["step"], pytest.approx(p[metric], rel=1e-6)) for p in curve]
    last = rec["max_steps"]
    assert s["test/score"] == [(last, pytest.approx(rec["test"]["score"], rel=1e-6))]
    assert s["test/best_step"] == [(last, rec["best_step"])]
    for task, r in rec["test"]["per_task"].items():
        assert s[f"test/{task}/accuracy"] == [(last, pytest.approx(r["accuracy"], rel=1e-6))]
    assert not [t for t in s if "diagnostics" in t]  # LoRA's diagnostics summary is empty
    # the logs are not records, and git keeps them out of committed results
    assert iter_records(tmp_path / "tracked") == [run_path(tmp_path / "tracked", "smoke", "commonsense", "lora-r1",
                                                           0, 1e-3)]  # fmt: skip


def test_a_loradash_run_logs_its_launch_step_when_it_launches(tmp_path):
    _, rec, logs = tracked_run(tmp_path, "loradash-r1")
    s = scalars(logs)
    t = rec["config"]["method"]["params"]["prelaunch_steps"]
    assert t == 2 and rec["diagnostics"]["launch_step"] == t
    # the first validation after the launch (step 2, right after it) carries it, and every later one
    assert s["diagnostics/launch_step"] == [(2, t), (4, t)]
    assert [st for st, _ in s["diagnostics/max_lambda"]] == [2, 4]
    assert s["diagnostics/max_lambda"][0][1] == 0.0  # launched after step 2's update: lambda not moved yet
    # the record's diagnostics (of the kept checkpoint) at the end
    summary = rec["diagnostics"]["summary"]
    assert s["test/diagnostics/launch_step"] == [(4, t)]
    assert s["test/diagnostics/max_lambda"] == [(4, pytest.approx(summary["max |lambda|"], rel=1e-6))]


def test_a_resumed_run_shows_each_step_once(tmp_path, monkeypatch):
    """Killed in step 4 (step 3 logged, last checkpoint at step 2), resumed: steps 3 and 4 are logged again and the
    killed attempt's step 3 is purged, so TensorBoard reads the uninterrupted run's curve."""
    _, ref, ref_logs = tracked_run(tmp_path / "ref", "lora-r1", checkpoint_every=2)
    seen = {"n": 0}
    real = CommonsenseRun.loss

    def loss(self, model, batch):
        seen["n"] += 1
        if seen["n"] == 4:
            raise KeyboardInterrupt("killed at micro-batch 4")
        return real(self, model, batch)

    with monkeypatch.context() as m:
        m.setattr(CommonsenseRun, "loss", loss)
        with pytest.raises(KeyboardInterrupt):
            tracked_run(tmp_path / "resumed", "lora-r1", checkpoint_every=2)
    path = run_path(tmp_path / "resumed", "smoke", "commonsense", "lora-r1", 0, 1e-3)
    assert ckpt.checkpoint_dir(path).exists()
    logs = tracking.logs_dir(path, task=None)
    assert [st for st, _ in scalars(logs)["train/loss"]] == [1, 2, 3]
    _, rec, logs = tracked_run(tmp_path / "resumed", "lora-r1", checkpoint_every=2)
    assert rec["test"] == ref["test"]
    assert scalars(logs) == scalars(ref_logs)  # each step once, with the uninterrupted run's values


def test_images_go_to_trackers_with_an_image_api(tmp_path):
    """What DreamBooth's grid takes (`Family.tracked_images`), on TensorBoard: an image per name at the last step."""
    from accelerate import Accelerator
    from PIL import Image

    from baselines import build_method

    cfg = smoke_config("lora-r1", report_to="tensorboard")
    folder = tmp_path / "smoke" / "commonsense" / tracking.FOLDER / "lora-r1" / "seed0_lr1e-3"
    track = tracking.RunTracking(("tensorboard",), folder, cfg=cfg, seed=0, profile="smoke")
    train_mod.reset_accelerate_state()
    accelerator = Accelerator(**track.accelerator_kwargs())
    track.start(accelerator, resumed_step=0, config_hash="0" * 16)
    test = {"score": 0.5, "per_task": {"dog": {"dino": 0.5, "n": 1}}}
    image = Image.new("RGB", (24, 16), "red")
    track.test(4, test, best_step=4, metrics=["dino"], method=build_method("lora", r=1), diagnostics={},
               images={"dog/grid": image})  # fmt: skip
    track.end()
    acc = EventAccumulator(str(folder))
    acc.Reload()
    assert acc.Tags()["images"] == ["test/dog/grid"]
    (event,) = acc.Images("test/dog/grid")
    assert (event.step, event.width, event.height) == (4, 24, 16)
    assert [(e.step, e.value) for e in acc.Scalars("test/dog/dino")] == [(4, 0.5)]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_git_ignores_the_logs_but_not_the_records():
    logs = tracking.logs_dir(run_path("results", "cpu", "glue", "lora-r2", 0, 1e-3, "sst2"), task="sst2")
    record = run_path("results", "cpu", "glue", "lora-r2", 0, 1e-3, "sst2")

    def ignored(path: Path) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO).returncode == 0

    assert ignored(logs / "events.out.tfevents.1.host.0") and ignored(logs.parents[2] / "mlflow.db")
    assert not ignored(record)


def test_a_dreambooth_run_logs_the_grid_of_its_generated_images(tmp_path):
    """DreamBooth draws its images after training only (no images at validation): the grid the record names goes
    to TensorBoard at the last step, with the family's metrics."""
    pytest.importorskip("diffusers")
    from PIL import Image

    from experiments.dreambooth import data as db

    try:
        db.default_data_dir()
    except FileNotFoundError:
        pytest.skip("no DreamBooth data (../shared/data/dreambooth)")
    p = load_profile("dreambooth", "smoke")
    cfg = with_overrides(experiment_config(p, "lora-r4", "dog"), train={"report_to": "tensorboard"},
                         eval={"image_dir": str(tmp_path / "images")})  # fmt: skip
    rec = train_mod.run(cfg, seed=0, lr=1e-3, profile="smoke", results_dir=tmp_path, progress=False)
    logs = tracking.logs_dir(run_path(tmp_path, "smoke", "dreambooth", "lora-r4", 0, 1e-3, "dog"), task="dog")
    acc = EventAccumulator(str(logs))
    acc.Reload()
    assert acc.Tags()["images"] == ["test/dog/grid"]
    (event,) = acc.Images("test/dog/grid")
    grid = Image.open(rec["test"]["per_task"]["dog"]["grid"])
    assert (event.step, event.width, event.height) == (rec["max_steps"], *grid.size)
    assert [(e.step, e.value) for e in acc.Scalars("test/dog/dino")] == [
        (rec["max_steps"], pytest.approx(rec["test"]["per_task"]["dog"]["dino"], rel=1e-6))
    ]
