"""The harness: config validation, resumable sweeps, run records, tables and the verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest

from baselines import available_methods, build_method
from experiments import sweep as sweep_mod
from experiments import train as train_mod
from experiments.config import ConfigError, family_dir, list_experiments, load_experiment
from experiments.profiles import list_profiles, load_profile
from experiments.results import read_record, run_path, validate_record
from experiments.tables import verdicts, write_tables

FAMILIES = ("commonsense", "commonsense_llm")


def all_configs():
    for family in FAMILIES:
        for profile in list_profiles(family):
            for name in list_experiments(family):
                yield family, profile, name


@pytest.mark.parametrize("family_name,profile,name", list(all_configs()))
def test_every_shipped_config_validates(family_name, profile, name):
    p = load_profile(family_name, profile)
    cfg = load_experiment(
        family_name,
        name,
        profile_overrides=p.overrides,
        profile_source=p.source,
        method_overrides=p.method_overrides,
    )
    method = build_method(cfg.method.name, **cfg.method.params)  # method hyper-parameters validate too
    assert cfg.method.name in available_methods()
    assert dict(method.params).items() >= cfg.method.params.items()
    assert p.grid_for(cfg.method.name, cfg.train.lr)


@pytest.fixture
def family(tmp_path, monkeypatch):
    """A scratch copy of the commonsense family folder, so tests can write broken configs into it."""
    import shutil

    import experiments.config as config_mod

    root = tmp_path / "exps"
    shutil.copytree(
        family_dir("commonsense"), root / "commonsense", ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    monkeypatch.setattr(config_mod, "EXPERIMENTS_ROOT", root)
    return root / "commonsense"


def test_unknown_key_names_file_and_key(family):
    (family / "lora-r1" / "experiment.yaml").write_text(
        "method: {name: lora, r: 1}\noverrides:\n  train: {lrr: 0.1}\n"
    )
    with pytest.raises(ConfigError, match=r"lora-r1/experiment.yaml: train.lrr: unknown key"):
        load_experiment("commonsense", "lora-r1")


def test_wrong_type_and_impossible_value(family):
    (family / "lora-r1" / "experiment.yaml").write_text(
        "method: {name: lora}\noverrides:\n  train: {max_steps: ten}\n"
    )
    with pytest.raises(ConfigError, match="train.max_steps: expected"):
        load_experiment("commonsense", "lora-r1")
    (family / "lora-r1" / "experiment.yaml").write_text(
        "method: {name: lora}\noverrides:\n  train: {max_steps: 0}\n"
    )
    with pytest.raises(ConfigError, match="train.max_steps: must be >= 1"):
        load_experiment("commonsense", "lora-r1")
    (family / "lora-r1" / "experiment.yaml").write_text("method: {name: lora}\n")
    (family / "defaults.yaml").write_text("train: {batch_size: 8, grad_accum: 3}\n")
    with pytest.raises(ConfigError, match=r"defaults.yaml: train.batch_size: 8 is not divisible"):
        load_experiment("commonsense", "lora-r1")


def test_malformed_yaml_and_unknown_names(family):
    (family / "lora-r1" / "experiment.yaml").write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment("commonsense", "lora-r1")
    with pytest.raises(ValueError, match="unknown experiment commonsense/nope .*known: .*lora-r8"):
        load_experiment("commonsense", "nope")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        load_profile("commonsense", "huge")
    with pytest.raises(ValueError, match="unknown experiment family"):
        load_experiment("vision", "x")


def test_unknown_method_lists_known():
    with pytest.raises((KeyError, ValueError), match="lora"):
        build_method("lora-plus-plus")


def test_impossible_rank_is_a_clear_error():
    from tests.conftest import tiny_bert

    with pytest.raises(ValueError, match="query"):
        build_method("lora", r=4096).wrap(tiny_bert(), target_modules=["query"])


# --- resumable sweeps, with a stand-in for the training so these tests take no time ----------------------------


def fake_result(cfg, seed):
    acc = 0.5 + 0.01 * seed + (0.05 if cfg.train.lr == 1e-3 else 0.0)
    correct = [1, 0, 1, 1]
    return {
        "param_counts": {"trainable": 10, "head": 1, "stored": 10, "total_model": 100},
        "test": {"protocol": "fake", "per_task": {"boolq": {"accuracy": 0.75, "n": 4, "correct": correct}},
                 "mean_accuracy": acc, "missing_tasks": []},
        "validation_curve": [{"step": 1, "val_accuracy": acc, "val_loss": 1 - acc}],
        "best_step": 1,
        "selection_metric": "val_accuracy",
        "diagnostics": {},
    }  # fmt: skip


def test_interrupted_sweep_resumes_each_run_exactly_once(tmp_path, monkeypatch):
    completed: list[tuple] = []
    calls = {"n": 0}

    def fake_train(cfg, *, seed, profile, progress=True):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed mid-run")
        completed.append((cfg.name, seed, cfg.train.lr))
        return fake_result(cfg, seed)

    monkeypatch.setattr(train_mod, "train_and_evaluate", fake_train)
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    profile = load_profile("commonsense", "smoke")
    statuses = [r["status"] for r in sweep_mod.plan_status("commonsense", "smoke", tmp_path)]
    assert statuses.count("complete") == 2 and statuses.count("interrupted") == 1
    summary = sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    assert summary["tune"] == {"skipped": 2, "complete": len(profile.experiments) - 2, "failed": 0}
    assert (
        len(completed) == len(set(completed)) == len(profile.experiments)
    )  # each run completed exactly once
    assert all(r["status"] == "complete" for r in sweep_mod.plan_status("commonsense", "smoke", tmp_path))
    # a third sweep does nothing
    again = sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    assert again["tune"]["complete"] == 0 and len(completed) == len(profile.experiments)


def test_failed_run_is_recorded_and_retried_and_complete_runs_are_kept(tmp_path, monkeypatch):
    profile = load_profile("commonsense", "smoke")
    first = profile.experiments[0]

    def failing(cfg, *, seed, profile, progress=True):
        if cfg.name == first:
            raise RuntimeError("boom")
        return fake_result(cfg, seed)

    monkeypatch.setattr(train_mod, "train_and_evaluate", failing)
    summary = sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    assert summary["tune"]["failed"] == 1
    path = run_path(tmp_path, "smoke", "commonsense", first, 0, profile.grid_for("lora")[0])
    rec = read_record(path)
    assert rec["status"] == "failed" and "boom" in rec["error"] and not validate_record(rec)
    other = run_path(tmp_path, "smoke", "commonsense", profile.experiments[1], 0, 1e-3)
    before = other.read_text()
    monkeypatch.setattr(
        train_mod, "train_and_evaluate", lambda cfg, *, seed, profile, progress=True: fake_result(cfg, seed)
    )
    summary = sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    assert summary["tune"]["complete"] == 1 and read_record(path)["status"] == "complete"
    assert other.read_text() == before


def test_corrupt_record_is_reported_not_skipped(tmp_path):
    path = run_path(tmp_path, "smoke", "commonsense", "lora-r1", 0, 1e-3)
    path.parent.mkdir(parents=True)
    path.write_text('{"status": "compl')
    with pytest.raises(ValueError, match="corrupt run record"):
        sweep_mod.plan_status("commonsense", "smoke", tmp_path)


def test_learning_rate_is_chosen_on_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(
        train_mod, "train_and_evaluate", lambda cfg, *, seed, profile, progress=True: fake_result(cfg, seed)
    )
    monkeypatch.setattr(
        sweep_mod, "load_profile",
        lambda f, n: __import__("dataclasses").replace(load_profile(f, n), lr_grid={"default": (1e-4, 1e-3)}, seeds=(0, 1)),
    )  # fmt: skip
    sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    chosen = json.loads((tmp_path / "smoke" / "commonsense" / "selected_lr.json").read_text())["selected"]
    assert all(c["lr"] == 1e-3 for c in chosen.values())  # the fake's validation score is higher at 1e-3
    assert read_record(run_path(tmp_path, "smoke", "commonsense", "lora-r1", 1, 1e-3))["status"] == "complete"
    assert read_record(run_path(tmp_path, "smoke", "commonsense", "lora-r1", 1, 1e-4)) is None


# --- the verdict -------------------------------------------------------------------------------------------


def _row(name, method, rank, trainable):
    return {"experiment": name, "method": method, "rank": rank, "trainable": trainable, "mean": 0.0}


@pytest.mark.parametrize("shift,expected", [(0.0, "supported"), (-10.0, "refuted"), (-1.0, "inconclusive")])
def test_verdict_rule(shift, expected):
    rng = np.random.default_rng(0)
    base = 70 + rng.normal(0, 0.3, 2000)
    rows = [_row("dash", "loradash", 1, 100), _row("lora8", "lora", 8, 800)]
    rows[0]["mean"], rows[1]["mean"] = 70 + shift, 70
    spread = 0.0 if expected != "inconclusive" else 1.0
    boots = {"dash": base + shift + rng.normal(0, spread, 2000), "lora8": base}
    (v,) = verdicts(rows, boots)
    assert v["factor"] == 8 and v["verdict"] == expected


def test_tables_from_real_smoke_records(tmp_path, monkeypatch):
    monkeypatch.setattr(
        train_mod, "train_and_evaluate", lambda cfg, *, seed, profile, progress=True: fake_result(cfg, seed)
    )
    sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    paths = write_tables("commonsense", "smoke", tmp_path)
    names = {p.name for p in paths}
    assert {"table.md", "table.csv", "verdict.md", "accuracy_vs_params.png", "LOG.md"} <= names
    assert "loradash-r1" in (tmp_path / "smoke" / "commonsense" / "table.md").read_text()


def test_smoke_profile_end_to_end_every_method(tmp_path):
    """The real thing, CI-sized: every method of the smoke profile trains all-MiniLM-L6-v2 on the shared data,
    LoRA-Dash crosses its launch, and every run writes a schema-valid record."""
    summary = sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    profile = load_profile("commonsense", "smoke")
    assert summary["tune"] == {"skipped": 0, "complete": len(profile.experiments), "failed": 0}
    methods = set()
    for row in sweep_mod.plan_status("commonsense", "smoke", tmp_path):
        rec = read_record(
            tmp_path.joinpath(row["path"])
            if not row["path"].startswith("/")
            else __import__("pathlib").Path(row["path"])
        )
        assert rec["status"] == "complete" and validate_record(rec) == []
        assert rec["provenance"]["git"]["commit"] and rec["identity"]["data"]["files"]
        methods.add(rec["method"])
        if rec["method"] == "loradash":
            d = rec["diagnostics"]
            assert d["launch_step"] == 2 and d["launched_layers"] == d["num_layers"] == 37
            assert d["lr_x_post_launch_steps"] == pytest.approx(2e-3)
    assert methods == set(available_methods())


def test_cli_list_run_skip_and_tables(tmp_path, monkeypatch, capsys):
    from experiments.cli import main

    monkeypatch.setattr(
        train_mod, "train_and_evaluate", lambda cfg, *, seed, profile, progress=True: fake_result(cfg, seed)
    )
    assert main(["list", "--profile", "smoke", "--results-dir", str(tmp_path)]) == 0
    assert "0/6 complete" in capsys.readouterr().out
    args = [
        "run",
        "--profile",
        "smoke",
        "--experiment",
        "lora-r1",
        "--lr",
        "1e-3",
        "--results-dir",
        str(tmp_path),
    ]
    assert main(args) == 0
    path = run_path(tmp_path, "smoke", "commonsense", "lora-r1", 0, 1e-3)
    before = path.read_text()
    assert main(args) == 0 and "complete already" in capsys.readouterr().out
    assert path.read_text() == before  # a complete record is never rerun or overwritten without --force
    assert main(["sweep", "--profile", "smoke", "--results-dir", str(tmp_path), "--no-progress"]) == 0
    assert main(["tables", "--profile", "smoke", "--results-dir", str(tmp_path)]) == 0
    assert (tmp_path / "smoke" / "commonsense" / "verdict.md").is_file()
