"""`transformers.Trainer` integration: launch LoRA-Dash on the optimizer-step clock."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .model import update_loradash

__all__ = ["LoraDashCallback"]


class LoraDashCallback(TrainerCallback):
    """Calls `update_loradash(model, state.global_step)` after every optimizer step.

    `on_step_end` runs once per optimizer step (not per accumulation micro-batch), after `global_step` has been
    incremented, so the launch happens after exactly `prelaunch_steps` updates. `on_train_begin` handles t = 0
    and resuming from a checkpoint past t.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            update_loradash(model, state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            update_loradash(model, state.global_step)
