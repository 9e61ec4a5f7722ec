"""`verify` reruns committed runs and compares them: on the same machine and code, bitwise-equal predictions."""

from __future__ import annotations

from experiments.analysis.verify import report, verify
from experiments.harness.records import read_record, run_path
from experiments.harness.train import run


def test_verify_reruns_a_run_and_finds_it_bitwise_equal(tmp_path):
    from experiments.harness.config import load_experiment
    from experiments.harness.profiles import load_profile

    p = load_profile("glue", "smoke")
    cfg = load_experiment("glue", "loradash-r2", profile_overrides=p.overrides, profile_source=p.source,
                          method_overrides=p.method_overrides, task="cola", task_overrides={})  # fmt: skip
    results = tmp_path / "results"
    run(cfg, seed=0, lr=1e-3, profile="smoke", results_dir=results, progress=False)
    assert (
        read_record(run_path(results, "smoke", "glue", "loradash-r2", 0, 1e-3, "cola"))["status"]
        == "complete"
    )
    rows = verify("glue", "smoke", results, tmp_path / "scratch", n=1, experiments=["loradash-r2"])
    (row,) = rows
    assert row["experiment"] == "loradash-r2" and row["task"] == "cola"
    assert row["identical_predictions"] and row["config_unchanged"] and row["difference"] == 0.0
    assert "bitwise equal" in report(rows)
    # the committed record is untouched; the rerun went to the scratch folder
    assert (tmp_path / "scratch" / "smoke" / "glue" / "loradash-r2" / "cola" / "seed0_lr1e-3.json").is_file()
