"""Bad input: one clear line, nothing lost.

Every case here is a user's mistake in a config, a data file, a command-line value, a run record, an adapter
folder, or a run that diverges. Each must exit with status 2 and exactly one line on stderr naming the
problem, and leave every record already written byte for byte as it was. The commands run in-process against
a scratch copy of the family folders (`experiments.harness.config.EXPERIMENTS_ROOT` points at it) and of the data
(symlinks, with the broken file written in place of one), so the checks of `sweep` and `run` see them before
anything trains; training is a stand-in except where it is the point (the NaN loss).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.glue.family import GlueRun
from experiments.harness import train as train_mod
from experiments.harness.config import EXPERIMENTS_ROOT
from experiments.harness.records import read_record, run_path
from tests.helpers import fake_train

TRAIN_AND_EVALUATE = train_mod.train_and_evaluate  # the real loop, kept before any test replaces it
GLUE_LOSS = GlueRun.loss
SHARED = EXPERIMENTS_ROOT.parent.parent / "shared" / "data"
FAMILIES = ("commonsense", "glue")


def _symlinked_copy(src: Path, dst: Path) -> None:
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(src)).symlink_to(f)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A results folder with complete records of both smoke profiles (stand-in training), made once."""
    results = tmp_path_factory.mktemp("written")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_mod, "train_and_evaluate", fake_train)
        for family in FAMILIES:
            assert main(["sweep", "--family", family, "--profile", "smoke", "--results-dir", str(results),
                         "--no-progress"]) == 0  # fmt: skip
    return results


@dataclass
class Scratch:
    root: Path  # experiments/ copy (yaml only)
    data: Path  # commonsense data (symlinks)
    glue: Path  # GLUE data (symlinks)
    results: Path

    def write(self, relative: str, text: str | bytes, *, under: Path | None = None) -> Path:
        path = (under or self.root) / relative
        path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path


@pytest.fixture
def scratch(tmp_path, monkeypatch, written) -> Scratch:
    import experiments.harness.config as config_mod

    root = tmp_path / "exps"
    for family in FAMILIES:
        shutil.copytree(
            EXPERIMENTS_ROOT / family, root / family, ignore=shutil.ignore_patterns("*.py", "__pycache__")
        )
    monkeypatch.setattr(config_mod, "EXPERIMENTS_ROOT", root)
    s = Scratch(root, tmp_path / "data", tmp_path / "glue", tmp_path / "results")
    _symlinked_copy(SHARED / "commonsense", s.data)
    _symlinked_copy(SHARED / "glue", s.glue)
    monkeypatch.setenv("LORADASH_DATA_DIR", str(s.data))
    monkeypatch.setenv("LORADASH_GLUE_DIR", str(s.glue))
    shutil.copytree(written, s.results)
    monkeypatch.setattr(train_mod, "train_and_evaluate", fake_train)  # training is not the point here
    return s


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


def check_one_line(scratch: Scratch, capsys, argv: list[str], *expected: str) -> str:
    """Exit 2, one line on stderr containing every `expected` text, and no record changed."""
    before = snapshot(scratch.results)
    argv = [a.replace("@", str(scratch.results.parent), 1) if a.startswith("@/") else a for a in argv]
    if "--results-dir" not in argv and argv[0] not in ("budget", "families"):
        argv = [*argv, "--results-dir", str(scratch.results)]
    code, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    assert snapshot(scratch.results) == before
    return lines[0]


SWEEP = ["sweep", "--profile", "smoke", "--no-progress"]
GLUE_SWEEP = ["sweep", "--family", "glue", "--profile", "smoke", "--no-progress"]
RUN = ["run", "--profile", "smoke", "--experiment", "lora-r1", "--lr", "1e-3", "--no-progress"]
CS = "commonsense"

# (id, setup(scratch), argv, texts the line must hold)
Setup = Callable[[Scratch], object]
CASES: list[tuple[str, Setup, list[str], tuple[str, ...]]] = [
    # -- configs ------------------------------------------------------------------------------------------------
    ("unknown-key", lambda s: s.write(f"{CS}/lora-r1/experiment.yaml",
                                      "method: {name: lora, r: 1}\noverrides:\n  train: {lrr: 0.1}\n"),
     SWEEP, ("lora-r1/experiment.yaml", "train.lrr", "unknown key")),
    ("wrong-type", lambda s: s.write(f"{CS}/lora-r1/experiment.yaml",
                                     "method: {name: lora, r: 1}\noverrides:\n  train: {max_steps: ten}\n"),
     SWEEP, ("train.max_steps", "expected")),
    ("negative-rank", lambda s: s.write(f"{CS}/lora-r1/experiment.yaml", "method: {name: lora, r: -1}\n"),
     SWEEP, ("lora-r1/experiment.yaml", "r must be >= 1, got -1")),
    ("rank-too-large", lambda s: s.write(f"{CS}/lora-r1/experiment.yaml", "method: {name: lora, r: 1000}\n"),
     SWEEP, ("lora-r1/experiment.yaml", "r=1000", "min(out, in) = 384")),
    ("s-too-large", lambda s: s.write(f"{CS}/loradash-r1/experiment.yaml",
                                      "method: {name: loradash, r: 1, num_directions: 500}\n"),
     SWEEP, ("loradash-r1/experiment.yaml", "num_directions (s) = 500", "min(out, in) = 384")),
    ("t-beyond-the-run", lambda s: s.write(f"{CS}/profiles.yaml", (s.root / CS / "profiles.yaml").read_text()
                                           .replace("loradash: {prelaunch_steps: 2}", "loradash: {prelaunch_steps: 4}")),
     SWEEP, ("prelaunch_steps (t) = 4", "4 optimizer steps")),
    ("t-beyond-an-epochs-run", lambda s: (
        s.write(f"{CS}/loradash-r1/experiment.yaml",
                "method: {name: loradash, r: 1}\noverrides:\n  train: {max_steps: null, epochs: 1}\n"),
        s.write(f"{CS}/profiles.yaml", (s.root / CS / "profiles.yaml").read_text()
                .replace("loradash: {prelaunch_steps: 2}", "loradash: {prelaunch_steps: 100}"))),
     # 48 training items in batches of 4: one epoch is 12 steps, counted from the data without the model
     ["run", "--profile", "smoke", "--experiment", "loradash-r1", "--lr", "1e-3"], ("(t) = 100", "12 optimizer")),
    ("unknown-hyper-parameter", lambda s: s.write(f"{CS}/lora-r1/experiment.yaml", "method: {name: lora, rank: 2}\n"),
     SWEEP, ("lora-r1/experiment.yaml", "unknown hyper-parameter", "rank")),
    ("unknown-method", lambda s: s.write(f"{CS}/lora-r1/experiment.yaml", "method: {name: lorra, r: 1}\n"),
     SWEEP, ("unknown method 'lorra'", "loradash")),
    ("malformed-yaml", lambda s: s.write(f"{CS}/lora-r1/experiment.yaml", "method: [unclosed\n"),
     SWEEP, ("lora-r1/experiment.yaml", "not valid YAML")),
    ("checkpoint-every-zero", lambda s: s.write(f"{CS}/lora-r1/experiment.yaml",
                                                "method: {name: lora, r: 1}\noverrides:\n  train: {checkpoint_every: 0}\n"),
     SWEEP, ("train.checkpoint_every", "must be >= 1")),
    ("report-to-unknown", lambda s: s.write(f"{CS}/lora-r1/experiment.yaml",
                                            "method: {name: lora, r: 1}\noverrides:\n  train: {report_to: tensorbord}\n"),
     SWEEP, ("lora-r1/experiment.yaml", "train.report_to", "unknown tracker 'tensorbord'", "tensorboard")),
    ("model-not-loadable", lambda s: s.write(f"{CS}/lora-r1/experiment.yaml",
                                             "method: {name: lora, r: 1}\noverrides:\n  model: {name: /nonexistent/model}\n"),
     RUN, ("cannot load '/nonexistent/model'",)),
    ("unknown-profile-key", lambda s: s.write(f"{CS}/profiles.yaml", "smoke: {experimentz: all}\n"),
     SWEEP, ("profiles.yaml[smoke]", "experimentz", "unknown key")),
    ("unknown-family", lambda s: None, ["sweep", "--family", "vision", "--profile", "smoke"],
     ("unknown experiment family 'vision'", "glue")),
    ("unknown-profile", lambda s: None, ["sweep", "--profile", "huge"], ("unknown profile 'huge'", "smoke")),
    ("unknown-experiment", lambda s: None, ["run", "--profile", "smoke", "--experiment", "nope", "--lr", "1e-3"],
     ("unknown experiment 'nope'", "lora-r1")),
    ("unknown-task", lambda s: None, ["run", "--family", "glue", "--profile", "smoke", "--experiment", "lora-r2",
                                      "--task", "mnlx", "--lr", "1e-3"], ("task 'mnlx'", "cola")),
    ("task-for-a-mixed-family", lambda s: None, [*RUN, "--task", "boolq"], ("takes no --task",)),
    ("missing-task", lambda s: None, ["run", "--family", "glue", "--profile", "smoke", "--experiment", "lora-r2",
                                      "--lr", "1e-3"], ("pass --task", "stsb")),
    ("budget-unknown-method", lambda s: None, ["budget", "--method", "lorra"], ("unknown method 'lorra'",)),
    # -- results folder: checked before any run trains ---------------------------------------------------------
    ("results-dir-under-a-file", lambda s: s.write("afile", "x", under=s.results.parent),
     [*GLUE_SWEEP, "--results-dir", "@/afile/sub"], ("--results-dir", "afile/sub", "cannot create or write")),
    ("results-dir-in-proc", lambda s: None, [*GLUE_SWEEP, "--results-dir", "/proc/x"],
     ("--results-dir /proc/x", "cannot create or write")),
    ("run-results-dir-under-a-file", lambda s: s.write("afile", "x", under=s.results.parent),
     [*RUN, "--results-dir", "@/afile/sub"], ("--results-dir", "afile/sub", "cannot create or write")),
    ("tables-results-dir-typo", lambda s: None, ["tables", "--family", "glue", "--profile", "smoke", "--results-dir",
                                                 "/typo"], ("--results-dir /typo", "no such folder")),
    # -- command-line values -----------------------------------------------------------------------------------
    ("lr-negative", lambda s: None, ["run", "--profile", "smoke", "--experiment", "lora-r1", "--lr", "-1"],
     ("--lr", "must be a finite number > 0")),
    ("lr-zero", lambda s: None, ["run", "--profile", "smoke", "--experiment", "lora-r1", "--lr", "0"],
     ("--lr", "> 0, got 0")),
    ("lr-not-a-number", lambda s: None, ["run", "--profile", "smoke", "--experiment", "lora-r1", "--lr", "fast"],
     ("--lr", "not a number")),
    ("seed-negative", lambda s: None, [*RUN, "--seed", "-1"], ("--seed", "must be >= 0")),
    ("jobs-zero", lambda s: None, [*SWEEP, "--jobs", "0"], ("--jobs", "must be >= 1")),
    ("unknown-command-option", lambda s: None, [*SWEEP, "--jbos", "2"], ("unrecognized arguments", "--jbos")),
    # -- data: commonsense (LLM-Adapters JSON) -----------------------------------------------------------------
    ("data-dir-missing", lambda s: shutil.rmtree(s.data), SWEEP, ("LORADASH_DATA_DIR=", "is not a folder")),
    ("data-dir-empty", lambda s: (shutil.rmtree(s.data), s.data.mkdir()), SWEEP,
     ("no commonsense", "LORADASH_DATA_DIR=", "is an empty folder")),
    ("glue-data-dir-empty", lambda s: (shutil.rmtree(s.glue), s.glue.mkdir()), GLUE_SWEEP,
     ("LORADASH_GLUE_DIR=", "is an empty folder")),
    ("data-file-missing", lambda s: (s.data / "ARC-Easy" / "train.json").unlink(), SWEEP,
     ("ARC-Easy/train.json", "not found")),
    ("data-truncated", lambda s: s.write("ARC-Easy/train.json", (SHARED / CS / "ARC-Easy" / "train.json")
                                         .read_text()[:5000], under=s.data),
     SWEEP, ("ARC-Easy/train.json", "invalid JSON")),
    ("data-empty", lambda s: s.write("openbookqa/test.json", "", under=s.data), SWEEP,
     ("openbookqa/test.json", "invalid JSON at line 1")),
    ("data-empty-list-test", lambda s: s.write("openbookqa/test.json", "[]", under=s.data), SWEEP,
     ("openbookqa/test.json", "no items")),
    ("data-empty-list-train", lambda s: s.write("ARC-Easy/train.json", " [ ]\n", under=s.data), SWEEP,
     ("ARC-Easy/train.json", "no items")),
    ("data-wrong-label", lambda s: s.write("ARC-Easy/test.json", json.dumps([{
        "instruction": "Please choose the correct answer to the question: Why?\n\nAnswer1: a Answer2: b\n\n"
                       "Answer format: answer1/answer2",
        "input": "", "output": "the correct answer is answer9", "answer": "answer9"}]), under=s.data),
     SWEEP, ("ARC-Easy/test.json", "item 0", "'answer'", "answer9")),
    ("data-wrong-encoding", lambda s: s.write("boolq/test.json", '[{"instruction": "caf\u00e9"}]'.encode("latin-1"),
                                              under=s.data), SWEEP, ("boolq/test.json", "not UTF-8")),
    ("data-item-without-choices", lambda s: s.write("ARC-Challenge/train.json", json.dumps([{
        "instruction": "Please choose the correct answer to the question: Why?\n\nAnswer format: answer1/answer2",
        "input": "", "output": "the correct answer is answer1", "answer": "answer1"}]), under=s.data),
     SWEEP, ("ARC-Challenge/train.json", "item 0", "'instruction'", "Answer1")),
    ("data-too-few-examples", lambda s: s.write(f"{CS}/lora-r1/experiment.yaml",
                                                "method: {name: lora, r: 1}\noverrides:\n  data: {val_examples: 100000}\n"),
     SWEEP, ("cannot spare data.val_examples=100000",)),
    # -- data: GLUE (TSV) ---------------------------------------------------------------------------------------
    ("glue-file-missing", lambda s: (s.glue / "STS-B" / "dev.tsv").unlink(), GLUE_SWEEP, ("STS-B/dev.tsv",)),
    ("glue-wrong-label", lambda s: s.write("CoLA/dev.tsv", "gj04\t7\t\tThe sailors rode the breeze.\n", under=s.glue),
     GLUE_SWEEP, ("CoLA/dev.tsv:1", "label", "'7'")),
    ("glue-truncated-row", lambda s: s.write("CoLA/train.tsv", (SHARED / "glue" / "CoLA" / "train.tsv").read_text()
                                             [:3000].rsplit("\t", 1)[0], under=s.glue),
     GLUE_SWEEP, ("CoLA/train.tsv:", "tab-separated fields")),
    ("glue-empty", lambda s: s.write("STS-B/dev.tsv", "", under=s.glue), GLUE_SWEEP, ("STS-B/dev.tsv", "no data rows")),
    ("glue-header-only", lambda s: s.write("STS-B/dev.tsv", (SHARED / "glue" / "STS-B" / "dev.tsv").read_text()
                                           .splitlines(keepends=True)[0], under=s.glue),
     GLUE_SWEEP, ("STS-B/dev.tsv", "no data rows")),
    ("glue-wrong-encoding", lambda s: s.write("CoLA/dev.tsv", "gj04\t1\t\tcaf\u00e9\n".encode("latin-1"), under=s.glue),
     GLUE_SWEEP, ("CoLA/dev.tsv", "not UTF-8")),
    ("glue-similarity-out-of-range", lambda s: s.write(
        "STS-B/dev.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain\tx\t2012\t1\tnone\tnone\tA man.\tA man.\t7.5\n", under=s.glue),
     GLUE_SWEEP, ("STS-B/dev.tsv:2", "outside [0, 5]")),
    # -- run records --------------------------------------------------------------------------------------------
    ("record-corrupt", lambda s: s.write("smoke/commonsense/lora-r1/seed0_lr1e-3.json", "{\"status\": \"compl",
                                         under=s.results), SWEEP, ("corrupt run record", "lora-r1/seed0_lr1e-3.json")),
    ("record-truncated", lambda s: s.write("smoke/glue/lora-r2/stsb/seed0_lr1e-3.json",
                                           (s.results / "smoke/glue/lora-r2/stsb/seed0_lr1e-3.json").read_bytes()[:900],
                                           under=s.results),
     GLUE_SWEEP, ("corrupt run record", "stsb/seed0_lr1e-3.json")),
    ("record-not-an-object", lambda s: s.write("smoke/commonsense/full/seed0_lr1e-3.json", "[1, 2]",
                                               under=s.results), ["list", "--profile", "smoke"],
     ("corrupt run record", "not a JSON object")),
    ("record-corrupt-on-run", lambda s: s.write("smoke/commonsense/lora-r1/seed0_lr1e-3.json", b"\xff\xfe",
                                                under=s.results), RUN, ("corrupt run record",)),
]  # fmt: skip


@pytest.mark.parametrize("setup,argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_nothing_is_lost(scratch, capsys, setup, argv, expected):
    setup(scratch)
    check_one_line(scratch, capsys, argv, *expected)


@pytest.mark.parametrize("argv, expected", [
    # what `make reproduce PROFILE=cpu-ful` and `FAMILY=glue PROFILE=paperr` ask (they ran nothing, exit 0)
    (["families", "--with-profile", "cpu-ful", "--names"], ("unknown profile 'cpu-ful'", "no family has it", "cpu-full")),
    (["families", "--with-profile", "paperr", "--names", "--family", "glue"], ("unknown profile 'paperr'", "paper")),
])  # fmt: skip
def test_a_profile_no_family_has_is_one_line_for_make(capsys, argv, expected):
    code, err = run_cli(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(t in err for t in expected), err


def test_a_profile_only_other_families_have_is_skipped_with_a_note(capsys):
    capsys.readouterr()
    assert main(["families", "--with-profile", "cpu-power", "--names", "--family", "commonsense"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "" and "has no profile 'cpu-power': skipped" in err


def test_ctrl_c_is_one_line_exit_130_and_the_run_resumes(scratch, capsys, monkeypatch):
    """SIGINT in the middle of a sweep: one line, exit 130, the runs finished before it kept, the one it stopped
    marked `interrupted`, and the same command again finishes the sweep."""
    calls = {"n": 0}

    def interrupted(cfg, *, seed, profile, progress=True):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return fake_train(cfg, seed=seed, profile=profile)

    results = scratch.results.parent / "fresh"
    monkeypatch.setattr(train_mod, "train_and_evaluate", interrupted)
    code, err = run_cli([*GLUE_SWEEP, "--jobs", "1", "--results-dir", str(results)], capsys)
    lines = err.strip().splitlines()
    assert code == 130 and len(lines) == 1 and "interrupted (SIGINT)" in lines[0], err
    statuses = sorted(json.loads(p.read_text())["status"] for p in results.rglob("seed*.json"))
    assert statuses == ["complete", "interrupted"]
    monkeypatch.setattr(train_mod, "train_and_evaluate", fake_train)
    assert run_cli([*GLUE_SWEEP, "--jobs", "1", "--results-dir", str(results)], capsys)[0] == 0
    assert {json.loads(p.read_text())["status"] for p in results.rglob("seed*.json")} == {"complete"}


def test_sigterm_exits_143(scratch, capsys, monkeypatch):
    from experiments.cli import Interrupted

    def killed(cfg, *, seed, profile, progress=True):
        raise Interrupted(15)

    monkeypatch.setattr(train_mod, "train_and_evaluate", killed)
    code, err = run_cli(
        [*GLUE_SWEEP, "--jobs", "1", "--results-dir", str(scratch.results.parent / "t")], capsys
    )
    assert code == 143 and "interrupted (SIGTERM)" in err and len(err.strip().splitlines()) == 1


def test_an_unwritable_results_folder_trains_nothing(scratch, capsys, monkeypatch):
    def must_not_train(*a, **k):
        raise AssertionError("trained before the results folder was checked")

    monkeypatch.setattr(train_mod, "train_and_evaluate", must_not_train)
    scratch.write("afile", "x", under=scratch.results.parent)
    check_one_line(scratch, capsys, [*GLUE_SWEEP, "--results-dir", "@/afile/sub"], "cannot create or write")


@pytest.mark.parametrize("command", [SWEEP, RUN])
def test_a_missing_tracker_is_one_line_before_anything_trains(scratch, capsys, monkeypatch, command):
    def must_not_train(*a, **k):
        raise AssertionError("trained before the trackers were checked")

    monkeypatch.setattr(train_mod, "train_and_evaluate", must_not_train)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed, whatever this environment holds
    scratch.write(f"{CS}/lora-r1/experiment.yaml",
                  "method: {name: lora, r: 1}\noverrides:\n  train: {report_to: [tensorboard, wandb]}\n")  # fmt: skip
    check_one_line(scratch, capsys, command, "report_to: wandb needs the package wandb", "pip install wandb")


def test_a_nan_loss_leaves_a_failed_record_and_one_line(scratch, capsys, monkeypatch):
    """The real loop (not a stand-in): the loss turns NaN at the first step; the loop raises FloatingPointError."""
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(train_mod, "train_and_evaluate", TRAIN_AND_EVALUATE)
    monkeypatch.setattr(
        GlueRun, "loss", lambda self, model, batch: GLUE_LOSS(self, model, batch) * float("nan")
    )
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the model's load report is not the error line
    hf_logging.disable_progress_bar()
    path = run_path(scratch.results, "smoke", "glue", "lora-r2", 0, 2e-3, "cola")
    before = snapshot(scratch.results)
    try:
        code, err = run_cli(
            [
                "run",
                "--family",
                "glue",
                "--profile",
                "smoke",
                "--experiment",
                "lora-r2",
                "--task",
                "cola",
                "--lr",
                "2e-3",
                "--no-progress",
                "--results-dir",
                str(scratch.results),
            ],
            capsys,
        )
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "non-finite training loss nan at step 0" in lines[0] and str(path) in lines[0]
    rec = read_record(path)
    assert rec["status"] == "failed" and "DivergedError" in rec["error"]
    after = snapshot(scratch.results)
    assert {k: after[k] for k in before} == before  # the records already written are untouched


def test_a_bug_in_the_harness_shows_its_traceback(scratch, capsys, monkeypatch):
    def bug(cfg, **kwargs):
        raise RuntimeError("a harness bug")

    monkeypatch.setattr(train_mod, "train_and_evaluate", bug)
    with pytest.raises(RuntimeError, match="a harness bug"):
        main([*RUN, "--seed", "7", "--results-dir", str(scratch.results)])
    assert read_record(run_path(scratch.results, "smoke", CS, "lora-r1", 7, 1e-3))["status"] == "failed"


def test_debug_shows_the_traceback_of_a_users_mistake(scratch):
    from experiments.harness.config import ConfigError

    scratch.write(f"{CS}/lora-r1/experiment.yaml", "method: {name: lora, r: -1}\n")
    with pytest.raises(ConfigError, match="r must be >= 1"):
        main([*SWEEP, "--debug", "--results-dir", str(scratch.results)])


def test_a_corrupt_adapter_folder_is_one_clear_error(tmp_path):
    """loradash.from_pretrained on a truncated adapter_model.safetensors or a broken adapter_config.json."""
    import loradash
    from tests.conftest import tiny_bert

    model = loradash.get_loradash_model(
        tiny_bert(),
        loradash.LoraDashConfig(r=2, target_modules=["query"], num_directions=2, prelaunch_steps=1),
    )
    model.save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    whole = weights.read_bytes()
    for cut in (len(whole) // 2, 5):
        weights.write_bytes(whole[:cut])
        with pytest.raises(ValueError) as e:
            loradash.from_pretrained(tiny_bert(), tmp_path)
        assert len(str(e.value).splitlines()) == 1
        assert str(weights) in str(e.value) and "truncated or corrupt" in str(e.value)
    weights.write_bytes(whole)
    (tmp_path / "adapter_config.json").write_text('{"r": 2,')
    with pytest.raises(ValueError, match="adapter_config.json is not valid JSON"):
        loradash.from_pretrained(tiny_bert(), tmp_path)


@pytest.mark.parametrize("empty", ["commonsense_170k.json", "piqa/test.json"])
def test_an_example_free_file_is_a_data_error_of_commonsense_llm(tmp_path, monkeypatch, empty):
    """commonsense_llm reads the LLM-Adapters files through the commonsense loaders (its preflight data check is
    the commonsense family's): an empty training mix or test file is one line naming the file, before a run."""
    from experiments.commonsense.data import DataFormatError
    from experiments.harness.config import load_experiment, with_overrides
    from experiments.harness.preflight import check_data
    from tests.helpers import FIXTURES

    _symlinked_copy(FIXTURES, tmp_path)
    (tmp_path / empty).unlink()
    (tmp_path / empty).write_text("[]\n")
    monkeypatch.setenv("LORADASH_DATA_DIR", str(tmp_path))
    cfg = load_experiment("commonsense_llm", "llama-7b-lora-r4")  # the paper's data: commonsense_170k.json
    cfg = with_overrides(cfg, data={"val_examples": 2})  # the fixture mix has 7 items
    with pytest.raises(DataFormatError) as e:
        check_data(cfg)
    assert str(tmp_path / empty) in str(e.value) and "no items" in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_an_example_free_hub_split_is_a_glue_data_error(monkeypatch):
    """GLUE read from the hub (`data.source: hub`): an empty split gets the "no data rows" treatment of a
    header-only local file (the preflight builds the run's splits, so the sweep stops on it)."""
    import sys
    import types

    from experiments.glue.data import GlueFormatError, load_hub_split

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: []))
    with pytest.raises(GlueFormatError, match=r"nyu-mll/glue\[cola/validation\].*no rows"):
        load_hub_split("cola", "test")


# -- records are checked on every read (a hand edit, a copy into another run's slot) ------------------------------

CS_RECORD = "smoke/commonsense/lora-r1/seed0_lr1e-3.json"


def _edit(s: Scratch, relative: str, change: Callable[[dict], object]) -> Path:
    path = s.results / relative
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec))
    return path


def _all_correct(rec: dict) -> None:
    items = rec["test"]["per_task"]["boolq"]["items"]
    if "correct" in items:
        items["correct"] = [1] * len(items["correct"])
    else:
        items["predictions"] = list(items["labels"])


BAD_RECORDS = [
    ("copied-into-another-experiment", lambda s: shutil.copy(s.results / CS_RECORD,
                                                              s.results / "smoke/commonsense/full/seed0_lr1e-3.json"),
     "smoke/commonsense/full/seed0_lr1e-3.json", "experiment is 'lora-r1' but its path says 'full'"),
    ("nan-in-items", lambda s: _edit(s, CS_RECORD, lambda r: r["test"]["per_task"]["boolq"].update(
        {"accuracy": float("nan")})), CS_RECORD, "nan"),
    ("items-edited-to-all-correct", lambda s: _edit(s, CS_RECORD, _all_correct), CS_RECORD, "but its items give"),
    ("score-edited", lambda s: _edit(s, CS_RECORD, lambda r: r["test"].update({"score": 1.0})), CS_RECORD,
     "but its tasks give"),
    ("empty-object", lambda s: s.write(CS_RECORD, "{}", under=s.results), CS_RECORD, "missing status"),
    ("status-only", lambda s: s.write(CS_RECORD, '{"status": "complete"}', under=s.results), CS_RECORD, "missing"),
    ("test-not-a-mapping", lambda s: _edit(s, CS_RECORD, lambda r: r.update({"test": [1]})), CS_RECORD, "malformed"),
]  # fmt: skip


@pytest.mark.parametrize("setup,name,problem", [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
def test_a_bad_record_is_named_and_never_used(scratch, capsys, setup, name, problem):
    """`list` names it in one line and does not count it complete; `tables` leaves it out and names it in
    table.md; a sweep sets it aside (never deletes it) and runs that run again."""
    setup(scratch)
    bad = (scratch.results / name).read_bytes()
    args = ["--profile", "smoke", "--results-dir", str(scratch.results)]
    code, err = run_cli(["list", *args], capsys)
    lines = [line for line in err.splitlines() if "invalid run record" in line]
    assert code == 0 and len(lines) == 1 and name in lines[0] and problem in lines[0], err
    code, err = run_cli(["tables", *args], capsys)
    assert code == 0 and name in err, err
    table = (scratch.results / "smoke/commonsense/table.md").read_text()
    assert "Run records left out (1)" in table and name in table
    code, err = run_cli([*SWEEP, "--results-dir", str(scratch.results)], capsys)
    assert code == 0, err
    path = scratch.results / name
    kept = list(path.parent.glob(path.name + ".invalid-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == bad
    assert json.loads(path.read_text())["status"] == "complete"
    assert run_cli(["tables", *args], capsys)[0] == 0
    assert "left out" not in (scratch.results / "smoke/commonsense/table.md").read_text()


def test_a_record_in_another_seeds_slot_is_left_out_of_the_tables(scratch, capsys):
    src = scratch.results / CS_RECORD
    shutil.copy(src, src.with_name("seed1_lr1e-3.json"))
    code, err = run_cli(["tables", "--profile", "smoke", "--results-dir", str(scratch.results)], capsys)
    assert code == 0 and "seed is 0 but its path says 1" in err, err
    assert "lora-r1/seed1_lr1e-3.json" in (scratch.results / "smoke/commonsense/table.md").read_text()


# -- a complete record is never lost ------------------------------------------------------------------------------


def test_a_complete_record_is_never_replaced_by_a_failed_or_interrupted_one(scratch, capsys, monkeypatch):
    from experiments.cli import Interrupted

    path = scratch.results / CS_RECORD
    before = path.read_bytes()

    def killed(cfg, *, seed, profile, progress=True):
        raise Interrupted(15)

    def broken(cfg, *, seed, profile, progress=True):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train_mod, "train_and_evaluate", killed)
    assert run_cli([*RUN, "--force", "--results-dir", str(scratch.results)], capsys)[0] == 143
    assert path.read_bytes() == before
    monkeypatch.setattr(train_mod, "train_and_evaluate", broken)
    with pytest.raises(RuntimeError, match="complete record .* is kept"):
        main([*RUN, "--force", "--results-dir", str(scratch.results)])
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.replaced-*"))
    # a forced rerun that completes keeps the old record beside the new one
    monkeypatch.setattr(train_mod, "train_and_evaluate", fake_train)
    assert run_cli([*RUN, "--force", "--results-dir", str(scratch.results)], capsys)[0] == 0
    kept = list(path.parent.glob(path.name + ".replaced-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == before
    assert json.loads(path.read_text())["status"] == "complete" and path.read_bytes() != before


def test_stale_records_of_one_hash_never_overwrite_each_other(scratch, capsys):
    """The config flipped A -> B -> A -> B: two records of config A set aside, both kept."""
    exp = scratch.root / "commonsense" / "lora-r1" / "experiment.yaml"
    a, b = exp.read_text(), "method: {name: lora, r: 1, lora_dropout: 0.1}\n"
    path = scratch.results / CS_RECORD
    firsts = [path.read_bytes()]
    for text in (b, a, b):
        exp.write_text(text)
        assert run_cli([*SWEEP, "--results-dir", str(scratch.results)], capsys)[0] == 0
        firsts.append(path.read_bytes())
    kept = sorted(path.parent.glob(path.name + ".stale-*"))
    assert len(kept) == 3
    assert sorted(k.read_bytes() for k in kept) == sorted(firsts[:3])


# -- concurrent sweeps on one folder -----------------------------------------------------------------------------


def _counting_train(calls: list, delay: float = 0.05):
    import threading
    import time

    lock = threading.Lock()

    def train(cfg, *, seed, profile, progress=True):
        with lock:
            calls.append((cfg.name, cfg.task, seed, cfg.train.lr))
        time.sleep(delay)  # long enough for the other sweeps to reach the same run
        return fake_train(cfg, seed=seed, profile=profile)

    return train


@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_sweeps_split_the_work_and_train_no_run_twice(scratch, monkeypatch, n):
    import threading

    from experiments.harness import sweep as sweep_mod

    calls: list = []
    monkeypatch.setattr(train_mod, "train_and_evaluate", _counting_train(calls))
    results = scratch.results.parent / "together"
    notes: list[str] = []
    summaries = []

    def one() -> None:
        summaries.append(sweep_mod.sweep("glue", "smoke", results, jobs=1, progress=False, log=notes.append))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(summaries) == n
    assert len(calls) == len(set(calls)), "a run was trained twice"
    records = list(results.rglob("seed*_lr*.json"))
    assert len(records) == len(calls) and {json.loads(p.read_text())["status"] for p in records} == {
        "complete"
    }
    assert not list(results.rglob("*.lock")) and not any("FAILED" in x for x in notes), notes
    assert sum(s["tune"].get("locked", 0) for s in summaries) > 0  # they did meet


def test_a_run_locked_by_a_live_process_is_skipped_and_a_stale_lock_is_broken(scratch, capsys, monkeypatch):
    import os
    import socket
    import subprocess
    import sys

    from experiments.harness.runlock import lock_path

    record = scratch.results.parent / "locked" / CS_RECORD
    lock = lock_path(record)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    argv = [*RUN, "--results-dir", str(scratch.results.parent / "locked")]
    code, err = run_cli(argv, capsys)
    assert code == 2 and "is being run by pid" in err and not record.exists(), err
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    assert run_cli(argv, capsys)[0] == 0
    assert json.loads(record.read_text())["status"] == "complete" and not lock.exists()


@pytest.mark.parametrize("argv, expected", [
    (["run", "--profile", "smoke", "--experiment", "../glue/lora-r2", "--lr", "1e-3"], ("not a plain name",)),
    (["run", "--profile", "smoke", "--experiment", "lora-r1/../full", "--lr", "1e-3"], ("not a plain name",)),
    (["run", "--profile", "smoke", "--experiment", "..", "--lr", "1e-3"], ("not a plain name",)),
    (["run", "--family", "glue", "--profile", "smoke", "--experiment", "lora-r2", "--task", "../cola", "--lr", "1e-3"],
     ("task '../cola' is not in profile smoke",)),
    ([*RUN, "--seed", "4294967296"], ("--seed", "must be < 4294967296")),
])  # fmt: skip
def test_names_and_seeds_out_of_bounds_are_one_line(scratch, capsys, argv, expected):
    check_one_line(scratch, capsys, argv, *expected)
    assert not (scratch.results / "smoke" / "glue" / "lora-r2" / "seed0_lr1e-3.json").exists()


def test_a_full_disk_during_tables_is_one_line_and_keeps_what_was_there(scratch, capsys, monkeypatch):
    import errno
    import os

    args = ["tables", "--profile", "smoke", "--results-dir", str(scratch.results)]
    assert run_cli(args, capsys)[0] == 0
    out = scratch.results / "smoke" / "commonsense"
    before = {k: v for k, v in snapshot(out).items() if "/" not in k}  # the generated files
    (scratch.results / CS_RECORD).unlink()  # the tables would change
    real = os.fdopen

    def full(fd, *a, **k):
        f = real(fd, *a, **k)
        if "b" in (a[0] if a else k.get("mode", "")):
            f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f

    monkeypatch.setattr(os, "fdopen", full)
    code, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "the disk is full" in lines[0], err
    monkeypatch.setattr(os, "fdopen", real)
    assert {k: v for k, v in snapshot(out).items() if "/" not in k} == before  # none truncated, no temp file
