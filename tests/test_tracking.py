"""`train.report_to`: which trackers a config names, that they are not in the config hash, that a missing one is
one line before anything trains (tests/test_errors.py checks the CLI's line), and where their logs go.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.harness import tracking
from experiments.harness.config import ConfigError, config_hash, load_experiment, with_overrides
from experiments.harness.errors import MissingPackageError
from experiments.harness.preflight import preflight
from experiments.harness.profiles import experiment_config, load_profile
from experiments.harness.records import run_path

REPO = Path(__file__).resolve().parent.parent
SMOKE = load_profile("commonsense", "smoke")  # 4 steps of 4, validation every 2, LoRA-Dash t = 2


def smoke_config(experiment: str, **train):
    return with_overrides(experiment_config(SMOKE, experiment), train=train)


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


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_git_ignores_the_logs_but_not_the_records():
    logs = tracking.logs_dir(run_path("results", "cpu", "glue", "lora-r2", 0, 1e-3, "sst2"), task="sst2")
    record = run_path("results", "cpu", "glue", "lora-r2", 0, 1e-3, "sst2")

    def ignored(path: Path) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO).returncode == 0

    assert ignored(logs / "events.out.tfevents.1.host.0") and ignored(logs.parents[2] / "mlruns" / "0")
    assert not ignored(record)
