"""Past one process: `accelerate launch --num_processes 2` on the CPU (gloo) trains LoRA-Dash through the
harness and matches one process.

The same script runs once under plain python and once under `accelerate launch` with two processes: the GLUE
smoke configuration of LoRA-Dash (CoLA, 8 steps of 4 sentences, launch after step 2), with every dropout set to
0, so that the two runs differ only in how the batch is split and in the order gloo sums gradients. Stated
tolerance: validation losses and test predictions (logits' argmax) of the two records within 1e-4 (absolute)
resp. identical; the launch at the same step in every layer with the same chosen directions. The adapter saved
by the main process loads completely (`loradash.from_pretrained` checks every LoRA-Dash tensor) and holds the
launched state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4

SCRIPT = """
import sys
from pathlib import Path

import torch

import baselines.loradash as bl
from experiments.harness import train
from experiments.harness.config import load_experiment, with_overrides
from experiments.glue.family import GlueRun
from experiments.harness.profiles import load_profile

out = Path(sys.argv[1])
build = GlueRun.build_model


def build_without_dropout(self):
    model = build(self)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


diagnostics = bl.LoraDash.diagnostics


def diagnostics_and_save(self, model, **kwargs):  # the best checkpoint is loaded by now
    from accelerate import PartialState

    if PartialState().is_main_process:
        self.save_adapter(model, out / "adapter")
    return diagnostics(self, model, **kwargs)


GlueRun.build_model = build_without_dropout
bl.LoraDash.diagnostics = diagnostics_and_save
p = load_profile("glue", "smoke")
cfg = load_experiment("glue", "loradash-r2", profile_overrides=p.overrides, profile_source=p.source,
                      method_overrides={"loradash": {"prelaunch_steps": 2, "lora_dropout": 0.0}}, task="cola")
cfg = with_overrides(cfg, train={"max_steps": 8, "eval_every": 2})
train.run(cfg, seed=0, lr=2e-3, profile="smoke", results_dir=out / "results", progress=False)
"""


def _run(cmd: list[str], out: Path, **env_vars: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env |= env_vars
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = (out / "results").glob("**/seed0_lr*.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_two_cpu_processes_match_one(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is not installed"
    script = tmp_path / "run_one.py"
    script.write_text(SCRIPT)
    one = _run([sys.executable, str(script), str(tmp_path / "one")], tmp_path / "one")
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]  # fmt: skip
    # ACCELERATE_USE_CPU: gloo between CPU processes (--multi_gpu only picks torchrun as the launcher)
    two = _run([*launch, str(script), str(tmp_path / "two")], tmp_path / "two", ACCELERATE_USE_CPU="1")
    assert two["status"] == one["status"] == "complete"
    assert two["examples_seen"] == one["examples_seen"] == 8 * 4  # the same batches, split over two processes
    gaps = []
    for a, b in zip(one["validation_curve"], two["validation_curve"], strict=True):
        assert a["step"] == b["step"] and abs(a["val_loss"] - b["val_loss"]) <= TOLERANCE, (a, b)
        gaps.append(abs(a["val_loss"] - b["val_loss"]))
    print(f"largest validation-loss gap, 2 processes vs 1: {max(gaps):.3g} (tolerance {TOLERANCE:g})")
    items_one, items_two = (r["test"]["per_task"]["cola"]["items"] for r in (one, two))
    assert items_one["predictions"] == items_two["predictions"]
    d1, d2 = one["diagnostics"], two["diagnostics"]
    assert d1["launch_step"] == d2["launch_step"] == 2 and d2["launched_layers"] == d2["num_layers"] > 0
    for name, layer in d2["layers"].items():
        assert layer["indices"] == d1["layers"][name]["indices"], name  # the same directions, chosen once

    from transformers import AutoModelForSequenceClassification

    import loradash
    from experiments.harness.loading import resolve_model

    for run, record in (("one", one), ("two", two)):
        base = AutoModelForSequenceClassification.from_pretrained(resolve_model("embedded:all-MiniLM-L6-v2"))
        model = loradash.from_pretrained(
            base, tmp_path / run / "adapter"
        )  # raises if a LoRA-Dash tensor is missing
        saved = {k.removeprefix("base_model.model."): v for k, v in loradash.dash_diagnostics(model).items()}
        assert saved and all(v["launched"] for v in saved.values())
        assert {k: v["indices"] for k, v in saved.items()} == {
            k: v["indices"] for k, v in record["diagnostics"]["layers"].items()
        }
