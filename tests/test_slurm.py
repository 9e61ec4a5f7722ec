"""`sweep --executor slurm`: one submitit job per run, records in the shared results folder, a rerun submits only
what is missing. Tested with submitit's in-process "debug" cluster (skipped where submitit is not installed)."""

from __future__ import annotations

import pytest

from experiments.harness import plan as plan_mod
from experiments.harness import sweep as sweep_mod
from experiments.harness import train as train_mod
from experiments.harness.records import read_record
from tests.helpers import fake_train, n_planned

submitit = pytest.importorskip("submitit")


def test_sweep_submits_one_job_per_missing_run(tmp_path, monkeypatch):
    import torch

    register_parameter = torch.nn.Module.register_parameter
    monkeypatch.setattr(train_mod, "train_and_evaluate", fake_train)
    jobs: list[tuple] = []
    job = sweep_mod._job

    def counted(request):
        jobs.append(request)
        return job(request)

    monkeypatch.setattr(sweep_mod, "_job", counted)
    quiet = {"progress": False, "log": lambda s: None, "executor": "slurm", "cluster": "debug"}
    summary = sweep_mod.sweep("commonsense", "smoke", tmp_path, **quiet)
    n = n_planned("commonsense")
    assert summary["tune"] == {"skipped": 0, "complete": n, "failed": 0} and len(jobs) == n
    assert len(set(jobs)) == n  # one job per run
    for row in plan_mod.plan_status("commonsense", "smoke", tmp_path):
        assert row["status"] == "complete" and read_record(__import__("pathlib").Path(row["path"]))
    (tmp_path / "smoke" / "commonsense" / "lora-r1" / "seed0_lr1e-3.json").unlink()
    again = sweep_mod.sweep("commonsense", "smoke", tmp_path, **quiet)
    assert again["tune"] == {"skipped": n - 1, "complete": 1, "failed": 0} and len(jobs) == n + 1
    # the preflight's meta-device patch is gone: later models get real weights
    assert (
        torch.nn.Module.register_parameter is register_parameter
        and torch.nn.Linear(2, 2).weight.device.type == "cpu"
    )


def test_unknown_executor_is_a_users_mistake(tmp_path):
    from experiments.harness.errors import UsageError

    with pytest.raises(UsageError, match="unknown executor 'pbs'"):
        sweep_mod.sweep("commonsense", "smoke", tmp_path, executor="pbs")


@pytest.mark.slow
def test_local_executor_runs_each_job_in_its_own_process(tmp_path):
    """submitit's "local" cluster: every run is a job in a process of its own (as on SLURM, where each job
    calls what `python -m experiments run` calls), its record lands in the shared results folder, and a rerun submits only
    the run whose record was removed."""
    quiet = {"progress": False, "log": lambda s: None, "executor": "slurm", "cluster": "local"}
    summary = sweep_mod.sweep("commonsense", "smoke", tmp_path, **quiet)
    n = n_planned("commonsense")
    assert summary["tune"] == {"skipped": 0, "complete": n, "failed": 0}
    logs = list((tmp_path / "smoke" / "commonsense" / "slurm").glob("*_log.out"))
    assert len(logs) == n  # one job (one process, one log) per run
    for row in plan_mod.plan_status("commonsense", "smoke", tmp_path):
        rec = read_record(__import__("pathlib").Path(row["path"]))
        assert row["status"] == "complete" and rec is not None and rec["status"] == "complete"
    (tmp_path / "smoke" / "commonsense" / "dora-r1" / "seed0_lr1e-3.json").unlink()
    again = sweep_mod.sweep("commonsense", "smoke", tmp_path, **quiet)
    assert again["tune"] == {"skipped": n - 1, "complete": 1, "failed": 0}
    assert len(list((tmp_path / "smoke" / "commonsense" / "slurm").glob("*_log.out"))) == n + 1
