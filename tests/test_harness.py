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
from experiments.registry import available_families, get_family
from experiments.results import read_record, run_path, validate_record
from experiments.tables import write_tables

FAMILIES = tuple(available_families())


def test_families_are_found_by_folder():
    assert {"commonsense", "commonsense_llm", "glue"} <= set(FAMILIES)
    for name in FAMILIES:
        fam = get_family(name)
        assert fam.primary_metric in fam.metrics and fam.validation_metrics
        assert (fam.folder() / "defaults.yaml").is_file() and list_profiles(name)


def test_families_command_picks_the_families_a_make_target_loops_over(capsys):
    """`families --with-profile P --names [--family F]`: what the Makefile runs for each profile of PROFILES."""
    from experiments.cli import main

    def names(*argv):
        assert main(["families", "--names", *argv]) == 0
        out = capsys.readouterr()
        return out.out.split(), out.err

    assert names("--with-profile", "cpu-power") == (["glue"], "")
    assert set(names("--with-profile", "cpu")[0]) >= {"commonsense", "glue"}
    assert names("--with-profile", "cpu", "--family", "glue") == (["glue"], "")
    skipped, note = names("--with-profile", "cpu-power", "--family", "commonsense")
    assert skipped == [] and note.startswith("family commonsense has no profile 'cpu-power': skipped")
    assert main(["families", "--names", "--family", "nope"]) == 2
    assert "unknown experiment family 'nope'" in capsys.readouterr().err


def all_configs():
    for family in FAMILIES:
        for profile in list_profiles(family):
            for name in list_experiments(family):
                yield family, profile, name


@pytest.mark.parametrize("family_name,profile,name", list(all_configs()))
def test_every_shipped_config_validates(family_name, profile, name):
    p = load_profile(family_name, profile)
    for task in p.task_list:
        cfg = load_experiment(
            family_name,
            name,
            profile_overrides=p.overrides,
            profile_source=p.source,
            method_overrides=p.method_overrides,
            task=task,
            task_overrides=(p.tasks or {}).get(task) if task else None,
        )
        method = build_method(cfg.method.name, **cfg.method.params)  # method hyper-parameters validate too
        assert cfg.method.name in available_methods()
        assert dict(method.params).items() >= cfg.method.params.items()
        assert p.grid_for(cfg.method.name, cfg.train.lr, name)
        assert cfg.task == task


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
    with pytest.raises(ValueError, match="unknown experiment 'nope' .*known: .*lora-r8"):
        load_experiment("commonsense", "nope")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        load_profile("commonsense", "huge")
    with pytest.raises(ValueError, match="unknown experiment family"):
        load_experiment("vision", "x")


def test_unknown_method_lists_known():
    with pytest.raises((KeyError, ValueError), match="lora"):
        build_method("lora-plus-plus")


def test_impossible_rank_is_a_clear_error():
    from tests.helpers import tiny_bert

    with pytest.raises(ValueError, match="query"):
        build_method("lora", r=4096).wrap(tiny_bert(), target_modules=["query"])


# --- resumable sweeps, with a stand-in for the training so these tests take no time ----------------------------

N_ITEMS = 40


def fake_items(family: str, task: str, quality: float, seed: int) -> dict:
    """Per-item arrays in the family's own format (the first of the known layouts its `task_score` reads),
    with about `quality` of the items right."""
    rng = np.random.default_rng(seed)
    right = rng.random(N_ITEMS) < quality
    ids = list(range(N_ITEMS))
    fam = get_family(family)
    if task == "stsb":
        labels = np.linspace(0, 5, N_ITEMS).round(2).tolist()
        preds = [y if r else 5 - y for y, r in zip(labels, right, strict=True)]
    else:
        labels = (np.arange(N_ITEMS) % 2).tolist()
        preds = [y if r else 1 - y for y, r in zip(labels, right, strict=True)]
    layouts = [
        {"ids": ids, "correct": right.astype(int).tolist()},
        {"ids": ids, "labels": labels, "predictions": preds},
        {"ids": ids, fam.primary_metric: np.where(right, 0.9, 0.1).tolist()},
        # a distance to a target and the baseline's distance (a ratio of sums, as planted's `matched`)
        {"ids": ids, "distance": np.where(right, 0.1, 0.9).tolist(), "base_distance": [1.0] * N_ITEMS},
    ]
    for items in layouts:
        try:
            fam.task_score(task, {k: np.asarray(v) for k, v in items.items()})
        except KeyError:
            continue
        return items
    raise AssertionError(f"no known item layout for {family}")


def fake_result(cfg, seed, *, test_best_lr=1e-4, val_best_lr=1e-3):
    """Validation prefers `val_best_lr`, the test set `test_best_lr`: a harness that picked on test would fail."""
    fam = get_family(cfg.family)
    val = 0.5 + 0.01 * seed + (0.05 if cfg.train.lr == val_best_lr else 0.0)
    quality = 0.6 + (0.3 if cfg.train.lr == test_best_lr else 0.0)
    tasks = [cfg.task] if cfg.task else [t for t in cfg.data.eval_tasks if t in ("boolq", "ARC-Easy")]
    per_task = {}
    for task in tasks:
        items = fake_items(cfg.family, task, quality, seed)
        arrays = {k: np.asarray(v) for k, v in items.items()}
        per_task[task] = {fam.primary_metric: fam.task_score(task, arrays), "n": N_ITEMS, "items": items}
    score = float(np.mean([r[fam.primary_metric] for r in per_task.values()]))
    metric = cfg.train.selection_metric
    v = val if fam.higher_is_better(metric) else 1 - val
    return {
        "param_counts": {"trainable": 10, "head": 1, "stored": 10, "total_model": 100},
        "test": {"protocol": "fake", "per_task": per_task, "missing_tasks": [], "score": score,
                 "primary_metric": fam.primary_metric},
        "validation_curve": [{"step": 1, metric: v}],
        "best_step": 1,
        "selection_metric": metric,
        "diagnostics": {},
    }  # fmt: skip


def fake_train(cfg, *, seed, profile, progress=True):
    return fake_result(cfg, seed)


SMOKE_FAMILIES = [f for f in FAMILIES if "smoke" in list_profiles(f)]


def n_planned(family: str) -> int:
    p = load_profile(family, "smoke")
    return len(p.experiments) * len(p.task_list) * len(p.tune_seeds)


@pytest.mark.parametrize("fam", SMOKE_FAMILIES)
def test_interrupted_sweep_resumes_each_run_exactly_once(fam, tmp_path, monkeypatch):
    completed: list[tuple] = []
    calls = {"n": 0}

    def interrupted(cfg, *, seed, profile, progress=True):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed mid-run")
        completed.append((cfg.name, cfg.task, seed, cfg.train.lr))
        return fake_result(cfg, seed)

    monkeypatch.setattr(train_mod, "train_and_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.sweep(fam, "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    statuses = [r["status"] for r in sweep_mod.plan_status(fam, "smoke", tmp_path)]
    assert statuses.count("complete") == 2 and statuses.count("interrupted") == 1
    summary = sweep_mod.sweep(fam, "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    n = n_planned(fam)
    assert summary["tune"] == {"skipped": 2, "complete": n - 2, "failed": 0}
    assert len(completed) == len(set(completed)) == n  # each run completed exactly once
    assert all(r["status"] == "complete" for r in sweep_mod.plan_status(fam, "smoke", tmp_path))
    again = sweep_mod.sweep(fam, "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    assert again["tune"]["complete"] == 0 and len(completed) == n


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
    monkeypatch.setattr(train_mod, "train_and_evaluate", fake_train)
    summary = sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    assert summary["tune"]["complete"] == 1 and read_record(path)["status"] == "complete"
    assert other.read_text() == before


def test_a_failure_in_the_final_checks_leaves_a_failed_record(tmp_path, monkeypatch):
    def bad_schema(cfg, *, seed, profile, progress=True):
        out = fake_result(cfg, seed)
        del out["test"]["per_task"]["boolq"]["items"]
        return out

    monkeypatch.setattr(train_mod, "train_and_evaluate", bad_schema)
    sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    rec = read_record(run_path(tmp_path, "smoke", "commonsense", "lora-r1", 0, 1e-3))
    assert rec["status"] == "failed" and "does not match the schema" in rec["error"] and "test" not in rec


def test_changed_config_makes_a_record_stale_and_the_old_one_is_kept(tmp_path, monkeypatch, family):
    monkeypatch.setattr(train_mod, "train_and_evaluate", fake_train)
    sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    path = run_path(tmp_path, "smoke", "commonsense", "lora-r1", 0, 1e-3)
    old = path.read_text()
    (family / "lora-r1" / "experiment.yaml").write_text("method: {name: lora, r: 1, lora_dropout: 0.1}\n")
    rows = {r["experiment"]: r["status"] for r in sweep_mod.plan_status("commonsense", "smoke", tmp_path)}
    assert rows["lora-r1"] == "stale" and rows["loradash-r1"] == "complete"
    summary = sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    assert summary["tune"]["complete"] == 1
    kept = list(path.parent.glob(path.name + ".stale-*"))
    assert len(kept) == 1 and kept[0].read_text() == old
    assert read_record(path)["method_params"]["lora_dropout"] == 0.1


def test_corrupt_record_is_reported_not_skipped(tmp_path):
    path = run_path(tmp_path, "smoke", "commonsense", "lora-r1", 0, 1e-3)
    path.parent.mkdir(parents=True)
    path.write_text('{"status": "compl')
    with pytest.raises(ValueError, match="corrupt run record"):
        sweep_mod.plan_status("commonsense", "smoke", tmp_path)


def test_learning_rates_never_share_a_record_file():
    from experiments.results import lr_tag

    rates = [1e-3, 1.5e-3, 2e-3, 2.2e-3, 5e-5, 1e-4, 3e-4, 1.25e-4]
    assert len({lr_tag(r) for r in rates}) == len(rates)
    assert lr_tag(1.5e-3) == "1.5e-3" and lr_tag(1e-3) == "1e-3"


@pytest.mark.parametrize("fam", SMOKE_FAMILIES)
def test_learning_rate_is_chosen_on_validation_not_test(fam, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "train_and_evaluate", fake_train)
    monkeypatch.setattr(
        sweep_mod, "load_profile",
        lambda f, n: __import__("dataclasses").replace(load_profile(f, n), lr_grid={"default": (1e-4, 1e-3)}, seeds=(0, 1)),
    )  # fmt: skip
    sweep_mod.sweep(fam, "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    chosen = json.loads((tmp_path / "smoke" / fam / "selected_lr.json").read_text())["selected"]
    # validation prefers 1e-3, the test set 1e-4: the choice must follow validation
    assert chosen and all(c["lr"] == 1e-3 for c in chosen.values())
    p = load_profile(fam, "smoke")
    task = p.task_list[0]
    exp = p.experiments[0]
    assert read_record(run_path(tmp_path, "smoke", fam, exp, 1, 1e-3, task))["status"] == "complete"
    assert read_record(run_path(tmp_path, "smoke", fam, exp, 1, 1e-4, task)) is None


@pytest.mark.parametrize("fam", SMOKE_FAMILIES)
def test_tables_are_deterministic(fam, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "train_and_evaluate", fake_train)
    sweep_mod.sweep(fam, "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    paths = write_tables(fam, "smoke", tmp_path, n_boot=200)
    names = {p.name for p in paths}
    assert {"table.md", "table.csv", "verdict.md", "score_vs_params.png", "LOG.md", "summary.json"} <= names
    first = {p.name: p.read_bytes() for p in paths}
    for p in paths:
        p.unlink()
    write_tables(fam, "smoke", tmp_path, n_boot=200)
    assert {p.name: p.read_bytes() for p in paths} == first
    table = (tmp_path / "smoke" / fam / "table.md").read_text()
    assert all(e in table for e in load_profile(fam, "smoke").experiments)


@pytest.mark.parametrize("fam", SMOKE_FAMILIES)
def test_smoke_profile_end_to_end_every_method(fam, tmp_path):
    """The real thing, CI-sized: every method of the family's smoke profile trains all-MiniLM-L6-v2 on the
    shared data, LoRA-Dash crosses its launch, and every run writes a schema-valid record."""
    summary = sweep_mod.sweep(fam, "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    assert summary["tune"] == {"skipped": 0, "complete": n_planned(fam), "failed": 0}
    methods = set()
    family_cls = get_family(fam)
    for row in sweep_mod.plan_status(fam, "smoke", tmp_path):
        rec = read_record(__import__("pathlib").Path(row["path"]))
        assert rec["status"] == "complete" and validate_record(rec, family_cls.primary_metric) == []
        assert rec["provenance"]["git"]["commit"] and rec["identity"]["data"]["files"]
        assert rec["provenance"]["protocol_version"] == family_cls.protocol_version
        methods.add(rec["method"])
        if rec["method"] == "loradash":
            d = rec["diagnostics"]
            assert d["launch_step"] == 2 and d["launched_layers"] == d["num_layers"] > 0
            assert d["post_launch_steps"] == 2
            assert d["lambda_lr_x_post_launch_steps"] == pytest.approx(2 * rec["lr"] * d["lambda_lr_ratio"])
    assert methods == set(available_methods())


def test_cli_list_run_skip_and_tables(tmp_path, monkeypatch, capsys):
    from experiments.cli import main

    monkeypatch.setattr(train_mod, "train_and_evaluate", fake_train)
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
    glue = ["run", "--family", "glue", "--profile", "smoke", "--experiment", "lora-r2", "--task", "cola", "--lr",
            "1e-3", "--results-dir", str(tmp_path)]  # fmt: skip
    assert main(glue) == 0
    assert read_record(run_path(tmp_path, "smoke", "glue", "lora-r2", 0, 1e-3, "cola"))["task"] == "cola"
