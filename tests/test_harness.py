"""The harness: config validation, resumable sweeps, run records, tables and the verdict."""

from __future__ import annotations

import json
import re

import pytest

from baselines import available_methods, build_method
from experiments.harness import plan as plan_mod
from experiments.harness import sweep as sweep_mod
from experiments.harness import train as train_mod
from experiments.harness.config import ConfigError, family_dir, list_experiments, load_experiment
from experiments.harness.profiles import list_profiles, load_profile
from experiments.harness.records import read_record, run_path, validate_record
from experiments.harness.registry import available_families, get_family
from experiments.report.tables import write_tables
from tests.helpers import fake_result, fake_train, n_planned

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

    import experiments.harness.config as config_mod

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

SMOKE_FAMILIES = [f for f in FAMILIES if "smoke" in list_profiles(f)]


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
    statuses = [r["status"] for r in plan_mod.plan_status(fam, "smoke", tmp_path)]
    assert statuses.count("complete") == 2 and statuses.count("interrupted") == 1
    summary = sweep_mod.sweep(fam, "smoke", tmp_path, jobs=1, progress=False, log=lambda s: None)
    n = n_planned(fam)
    assert summary["tune"] == {"skipped": 2, "complete": n - 2, "failed": 0}
    assert len(completed) == len(set(completed)) == n  # each run completed exactly once
    assert all(r["status"] == "complete" for r in plan_mod.plan_status(fam, "smoke", tmp_path))
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
    rows = {r["experiment"]: r["status"] for r in plan_mod.plan_status("commonsense", "smoke", tmp_path)}
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
        plan_mod.plan_status("commonsense", "smoke", tmp_path)


def test_learning_rates_never_share_a_record_file():
    from experiments.harness.records import lr_tag

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
def test_smoke_profile_end_to_end_every_method(fam, tmp_path, capfd):
    """The real thing, CI-sized: every method of the family's smoke profile trains all-MiniLM-L6-v2 on the
    shared data, LoRA-Dash crosses its launch, and every run writes a schema-valid record. The console is one
    line per finished run and a summary: no library load reports, weight-loading bars or known FutureWarnings."""
    lines: list[str] = []
    summary = sweep_mod.sweep(fam, "smoke", tmp_path, jobs=1, progress=False, log=lines.append)
    assert summary["tune"] == {"skipped": 0, "complete": n_planned(fam), "failed": 0}
    n = n_planned(fam)
    runs = [x for x in lines if x.startswith("[")]
    assert len(runs) == n and len(lines) == n + 1 and lines[n].splitlines()[0] == f"sweep {fam}/smoke:", lines
    assert all(re.match(rf"\[{i}/{n} tune\] \S+ seed=0 lr=\S+: \w+ -?\d+\.\d, .* \d+m\d\ds", x)
               for i, x in enumerate(runs, 1)), runs  # fmt: skip
    out, err = capfd.readouterr()
    for noise in ("LOAD REPORT", "Loading weights", "is_gradient_checkpointing", "MISSING"):
        assert noise not in out + err, (noise, (out + err)[:2000])
    methods = set()
    family_cls = get_family(fam)
    for row in plan_mod.plan_status(fam, "smoke", tmp_path):
        rec = read_record(__import__("pathlib").Path(row["path"]))
        assert rec["status"] == "complete" and validate_record(rec, family_cls.primary_metric) == []
        assert rec["provenance"]["git"]["commit"] and rec["identity"]["data"]["files"]
        assert rec["provenance"]["protocol_version"] == family_cls.protocol_version
        methods.add(rec["method"])
        if rec["method"] == "loradash":
            d = rec["diagnostics"]
            assert d["launch_step"] == 2 and d["launched_layers"] == d["num_layers"] > 0
            assert d["post_launch_steps"] == 2
            # the scheduled rates of the 2 post-launch steps (linear decay), summed; never above 2 x the peak
            assert 0 < d["lambda_lr_sum_after_launch"] <= 2 * rec["lr"] * d["lambda_lr_ratio"]
            assert d["dash_output_fraction_median"] is not None and d["dash_output_fraction_median"] >= 0
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


def test_quiet_libraries_silences_the_load_noise_and_restores_the_settings():
    import warnings

    from transformers.utils import logging as hf_logging

    from experiments.harness.loading import quiet_libraries

    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_libraries(progress=False):
            assert hf_logging.get_verbosity() == hf_logging.ERROR and not hf_logging.is_progress_bar_enabled()
            warnings.warn(
                "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
                FutureWarning,
                stacklevel=1,
            )
            warnings.warn("something else", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"]  # only the known warning is hidden
    assert hf_logging.get_verbosity() == hf_logging.WARNING and hf_logging.is_progress_bar_enabled()
    with quiet_libraries(progress=True):
        assert hf_logging.is_progress_bar_enabled()


def test_a_failed_run_says_why_in_its_line(tmp_path, monkeypatch):
    """A run whose fresh record does not check, or that raised, is one FAILED line naming the problem."""

    def broken(cfg, *, seed, profile, progress=True):
        raise RuntimeError("the loss went to nan at step 3")

    monkeypatch.setattr(train_mod, "train_and_evaluate", broken)
    lines: list[str] = []
    summary = sweep_mod.sweep("commonsense", "smoke", tmp_path, jobs=1, progress=False, log=lines.append)
    assert summary["tune"]["failed"] == n_planned("commonsense")
    fails = [x for x in lines if x.startswith("[")]
    assert fails and all("FAILED" in x and "the loss went to nan at step 3" in x for x in fails), fails


@pytest.mark.parametrize(("flags", "tty", "shown"), [((), True, True), ((), False, False),
                                                     (("--progress",), False, True), (("--no-progress",), True, False)])  # fmt: skip
def test_progress_bars_follow_the_terminal_unless_asked(flags, tty, shown, monkeypatch):
    import sys

    from experiments.cli import _progress, build_parser

    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    args = build_parser().parse_args(["sweep", "--profile", "smoke", *flags])
    assert _progress(args) is shown
