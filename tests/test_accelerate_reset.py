"""The harness's one use of accelerate's private state reset (experiments/harness/train.py reset_accelerate_state):
fails when accelerate removes or changes what it relies on, so that an upgrade shows it here first."""

from __future__ import annotations

from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState

from experiments.harness.train import reset_accelerate_state


def test_accelerate_still_has_the_private_resets():
    assert callable(AcceleratorState._reset_state) and callable(GradientState._reset_state)


def test_two_runs_with_other_accelerator_settings_in_one_process():
    reset_accelerate_state()
    first = Accelerator(mixed_precision="no", gradient_accumulation_steps=1).mixed_precision
    device = PartialState().device
    reset_accelerate_state()
    second = Accelerator(mixed_precision="bf16", gradient_accumulation_steps=2)
    assert first == "no" and second.mixed_precision == "bf16"  # without the reset accelerate refuses bf16
    assert second.gradient_accumulation_steps == 2 and PartialState().device == device  # process state kept
    reset_accelerate_state()
