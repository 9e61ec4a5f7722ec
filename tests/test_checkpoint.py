"""Runs that survive being killed: checkpoints every N optimizer steps, resume to the bitwise-same record.

In-process tests interrupt a run at a chosen micro-batch (the loss raises KeyboardInterrupt, as Ctrl-C would),
rerun it, and compare the resumed record with an uninterrupted one. The subprocess test kills a whole sweep
with SIGKILL at seeded random moments, reruns it, and checks that every run completes exactly once, that no
record already written changes, and that the records equal an uninterrupted sweep's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.glue.family import GlueRun
from experiments.harness import checkpoint as ckpt
from experiments.harness import train as train_mod
from experiments.harness.config import family_dir, load_experiment, with_overrides
from experiments.harness.profiles import load_profile
from experiments.harness.records import iter_records, read_record, run_path, validate_record

REPO = Path(__file__).resolve().parent.parent
SAME = ("test", "validation_curve", "best_step", "examples_seen", "max_steps", "diagnostics", "param_counts")


def glue_config(experiment: str, **train):
    p = load_profile("glue", "smoke")
    cfg = load_experiment("glue", experiment, profile_overrides=p.overrides, profile_source=p.source,
                          method_overrides=p.method_overrides, task="cola")  # fmt: skip
    # 16 steps of 4 cross an epoch (48 training items); t = 3 so that kills land before and after the launch
    train = {"max_steps": 16, "eval_every": 4, "checkpoint_every": 2, **train}
    cfg = with_overrides(cfg, train=train)
    if cfg.method.name == "loradash":
        cfg = dataclasses.replace(
            cfg, method=dataclasses.replace(cfg.method, params={**cfg.method.params, "prelaunch_steps": 3})
        )
    return cfg


def interrupt_at(monkeypatch, calls: int):
    """The loss raises KeyboardInterrupt at its `calls`-th call."""
    seen = {"n": 0}
    real = GlueRun.loss

    def loss(self, model, batch):
        seen["n"] += 1
        if seen["n"] == calls:
            raise KeyboardInterrupt(f"killed at micro-batch {calls}")
        return real(self, model, batch)

    monkeypatch.setattr(GlueRun, "loss", loss)


def same_fields(a: dict, b: dict) -> None:
    for key in SAME:
        assert a[key] == b[key], key


@pytest.mark.parametrize(
    "experiment,train,kills",
    [
        # Kill k counts the loss calls of its own process. loradash: the first checkpoint (step 2) is before the
        # launch (t = 3); the second (step 14) is after it and in the second epoch (12 batches per epoch), so the
        # resumed loader fast-forwards across an epoch. lora: gradient accumulation (2 micro-batches per step),
        # checkpoints at steps 4 and 14 (micro-batch 28 of 24 per epoch).
        ("loradash-r2", {}, [3, 13]),
        ("lora-r2", {"grad_accum": 2}, [11, 22]),
    ],
)
def test_a_resumed_run_writes_the_uninterrupted_record(
    experiment, train, kills, tmp_path, monkeypatch, capsys
):
    cfg = glue_config(experiment, **train)
    ref = train_mod.run(cfg, seed=0, lr=1e-3, profile="smoke", results_dir=tmp_path / "ref", progress=False)
    assert not ckpt.checkpoint_dir(
        run_path(tmp_path / "ref", "smoke", "glue", experiment, 0, 1e-3, "cola")
    ).exists()
    path = run_path(tmp_path / "resumed", "smoke", "glue", experiment, 0, 1e-3, "cola")
    steps_at_kill = []
    for calls in kills:
        with monkeypatch.context() as m:
            interrupt_at(m, calls)
            with pytest.raises(KeyboardInterrupt):
                train_mod.run(
                    cfg, seed=0, lr=1e-3, profile="smoke", results_dir=tmp_path / "resumed", progress=False
                )
        assert read_record(path)["status"] == "interrupted"
        meta = json.loads((ckpt.checkpoint_dir(path) / ckpt.META).read_text())
        steps_at_kill.append(meta["progress"]["step"])
        assert sorted(p.name for p in ckpt.checkpoint_dir(path).iterdir()) == sorted(
            [ckpt.META, meta["tensors"]]
        )  # one checkpoint, older tensor files removed
    assert steps_at_kill == [2, 14] if experiment.startswith("loradash") else [4, 14]
    capsys.readouterr()
    rec = train_mod.run(
        cfg, seed=0, lr=1e-3, profile="smoke", results_dir=tmp_path / "resumed", progress=False
    )
    assert f"from step {steps_at_kill[1]}" in capsys.readouterr().out
    same_fields(rec, ref)
    assert rec["status"] == "complete" and not ckpt.checkpoint_dir(path).exists()
    if experiment.startswith("loradash"):
        assert rec["diagnostics"]["launch_step"] == 3


def interrupted_at_step_5(tmp_path, monkeypatch):
    """A smoke GLUE run killed at step 5 of 6: its config, record path, checkpoint folder and checkpoint meta."""
    cfg = glue_config("lora-r2", max_steps=6, eval_every=3)
    path = run_path(tmp_path, "smoke", "glue", "lora-r2", 0, 1e-3, "cola")
    with monkeypatch.context() as m:
        interrupt_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            train_mod.run(cfg, seed=0, lr=1e-3, profile="smoke", results_dir=tmp_path, progress=False)
    d = ckpt.checkpoint_dir(path)
    return cfg, path, d, json.loads((d / ckpt.META).read_text())


def test_a_checkpoint_of_another_config_or_a_corrupt_one_is_not_used(tmp_path, monkeypatch):
    cfg, path, d, meta = interrupted_at_step_5(tmp_path, monkeypatch)
    owner = meta["owner"]
    assert ckpt.load(d, owner) is not None
    with pytest.warns(UserWarning, match="another config"):
        assert ckpt.load(d, {**owner, "config_hash": "0" * 16}) is None
    tensors = d / meta["tensors"]
    tensors.write_bytes(tensors.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        assert ckpt.load(d, owner) is None
    ref = train_mod.run(cfg, seed=0, lr=1e-3, profile="smoke", results_dir=tmp_path / "ref", progress=False)
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        rec = train_mod.run(cfg, seed=0, lr=1e-3, profile="smoke", results_dir=tmp_path, progress=False)
    same_fields(rec, ref)  # started afresh, and reached the same record


# --- a whole sweep killed with SIGKILL -------------------------------------------------------------------------

PROFILE = """
ckpt:
  description: a smoke-sized sweep that checkpoints every 2 steps (tests/test_checkpoint.py)
  overrides:
    data: {train_examples: 48, val_examples: 16, test_examples: 24, max_seq_len: 32}
    train: {max_steps: 16, batch_size: 4, warmup_ratio: null, warmup_steps: 1, eval_every: 4, eval_batch_size: 32,
            num_threads: 1, checkpoint_every: 2}
  method_overrides:
    loradash: {prelaunch_steps: 5}
  tasks: [cola]
  experiments: [loradash-r2, lora-r2]
  tune_seeds: [0]
  seeds: [0, 1]
  lr_grid: {default: [1.0e-3]}
  jobs: 1
"""

RUNNER = """
import sys
from pathlib import Path
import experiments.harness.config as config_mod
config_mod.EXPERIMENTS_ROOT = Path(sys.argv[1])
from experiments.cli import main
sys.exit(main(sys.argv[2:]))
"""


def start_sweep(root: Path, results: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-c", RUNNER, str(root), "sweep", "--family", "glue", "--profile", "ckpt",
           "--results-dir", str(results), "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def snapshot(results: Path) -> dict[str, bytes]:
    return {str(p.relative_to(results)): p.read_bytes() for p in iter_records(results)}


def checkpoints(results: Path) -> dict[str, int]:
    """Each checkpoint's step (by run), as a watcher outside the process sees them."""
    out = {}
    for meta in results.glob("**/*.ckpt/" + ckpt.META):
        try:
            out[str(meta.parent)] = json.loads(meta.read_text())["progress"]["step"]
        except (OSError, ValueError):
            pass
    return out


@pytest.mark.slow  # five processes, each importing torch and transformers: minutes on a busy machine
def test_a_sweep_killed_with_sigkill_resumes_every_run_exactly_once(tmp_path):
    root = tmp_path / "exps"
    shutil.copytree(family_dir("glue"), root / "glue", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    with open(root / "glue" / "profiles.yaml", "a") as f:
        f.write(PROFILE)
    ref_dir, results = tmp_path / "ref", tmp_path / "results"
    ref = start_sweep(root, ref_dir)
    assert ref.wait(timeout=600) == 0, ref.stdout.read()

    rng = random.Random(10)
    written: dict[str, bytes] = {}  # every complete record seen after a kill, with its bytes
    resumed = 0
    for _kill in range(4):
        proc = start_sweep(root, results)
        # A random moment: right after a random checkpoint write (0-3 writes after the first one this process
        # sees), plus a random delay; or, one time in four, a random delay after start.
        target = rng.randint(0, 3)
        delay = rng.uniform(0.0, 1.5)
        by_time = rng.random() < 0.25
        start, seen = time.monotonic(), checkpoints(results)
        writes = -1
        while proc.poll() is None and time.monotonic() - start < 300:
            now = checkpoints(results)
            if now != seen:
                writes += 1
                seen = now
            if (by_time and time.monotonic() - start > 8 + 10 * delay) or (not by_time and writes >= target):
                time.sleep(delay)
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0]
        resumed += out.count("resuming ")
        now = snapshot(results)
        for name, data in written.items():
            assert now[name] == data, f"{name} changed after a kill"
        written |= {n: d for n, d in now.items() if json.loads(d)["status"] == "complete"}
    final = start_sweep(root, results)
    out = final.communicate(timeout=600)[0]
    assert final.returncode == 0, out
    resumed += out.count("resuming ")
    assert resumed >= 1  # the kills landed after checkpoints, and runs resumed from them

    now = snapshot(results)
    for name, data in written.items():
        assert now[name] == data, f"{name} changed"  # a complete run is never run again
    reference = snapshot(ref_dir)
    assert set(now) == set(reference) and len(now) == 4  # 2 experiments x (tune seed 0 + final seed 1)
    for name in now:
        rec, want = json.loads(now[name]), json.loads(reference[name])
        assert rec["status"] == "complete" and validate_record(rec, "glue_score") == []
        same_fields(rec, want)
    assert not list(results.glob("**/*.ckpt"))  # checkpoints removed once their record is complete


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["progress"].update({"extra": 1}),
        lambda m: m.pop("rng"),
        lambda m: m["progress"].update({"step": str(m["progress"]["step"])}),
    ],
    ids=["extra-progress-key", "no-rng", "step-as-string"],
)
def test_a_checkpoint_of_the_wrong_shape_is_set_aside_and_the_run_starts_afresh(tmp_path, monkeypatch, edit):
    cfg, path, d, meta = interrupted_at_step_5(tmp_path, monkeypatch)
    owner = meta["owner"]
    edit(meta)
    (d / ckpt.META).write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        assert ckpt.load(d, owner) is None
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        rec = train_mod.run(cfg, seed=0, lr=1e-3, profile="smoke", results_dir=tmp_path, progress=False)
    assert rec["status"] == "complete" and validate_record(rec) == []
