"""What `save_pretrained` adds to a LoRA-Dash folder beside peft's files: the model card's LoRA-Dash section and
tags, and a warning when the adapter saved has trained but never launched.

Both read the folder peft has just written (adapter_model.safetensors), not the model: `LoraDashConfig.
save_pretrained` is the hook peft calls at the end of `PeftModel.save_pretrained`, and it has no model.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors import safe_open

from .clock import LoraDashWarning

__all__ = ["AdapterStatus", "adapter_status", "warn_if_unlaunched", "unlaunched_message", "update_model_card"]

CARD_HEADING = "## LoRA-Dash adapter"
CARD_TAGS = ("loradash", "lora-dash")
README = "README.md"
# init_lora_weights values that start B at zero: with these, a non-zero B means the adapter has trained.
_ZERO_B_INITS = (True, "gaussian")


@dataclass(frozen=True)
class AdapterStatus:
    layers: int  # adapted matrices in the file
    launched: int  # of them, launched
    trained: bool  # whether LoRA's B moved from its zero init (True when the init does not start B at zero)


def adapter_status(directory: str, init_lora_weights: Any) -> AdapterStatus | None:
    """Launch flags and training state of the adapter in `directory`'s safetensors file (None without one)."""
    path = os.path.join(directory, SAFETENSORS_WEIGHTS_NAME)
    if not os.path.isfile(path):
        return None
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        flags = [bool(f.get_tensor(k).item()) for k in keys if ".lora_dash_launched" in k]
        if init_lora_weights in _ZERO_B_INITS:
            trained = any(bool(f.get_tensor(k).any()) for k in keys if ".lora_B." in k)
        else:
            trained = True
    return AdapterStatus(layers=len(flags), launched=sum(flags), trained=trained)


def unlaunched_message(what: str, layers: int, launched: int, prelaunch_steps: int, clock: str) -> str:
    unit = "optimizer steps" if clock == "optimizer_step" else "forward calls"
    return (
        f"LoRA-Dash: {what} an adapter that has trained but not launched ({launched} of {layers} layers launched, "
        f"prelaunch_steps (t) = {prelaunch_steps} {unit}): so far it is plain LoRA, the dash term is zero. Fine for "
        "a checkpoint in the middle of the pre-launch phase; if training is over, it was shorter than t, or the "
        "clock never ran (a loop that drives it with update_loradash must call it after every step)"
    )


def warn_if_unlaunched(status: AdapterStatus | None, config: Any, what: str = "saved") -> None:
    if status is None or not status.trained or status.launched == status.layers:
        return
    message = unlaunched_message(
        what, status.layers, status.launched, config.prelaunch_steps, config.prelaunch_clock
    )
    warnings.warn(message, LoraDashWarning, stacklevel=3)


def _card_section(config: Any, status: AdapterStatus | None) -> str:
    if status is None:
        state = ""
    elif status.launched == status.layers:
        state = f" All {status.layers} adapted matrices have launched."
    else:
        state = (
            f" Saved before the launch ({status.launched} of {status.layers} matrices launched): until then it "
            "computes plain LoRA."
        )
    return f"""{CARD_HEADING}

A [LoRA-Dash](https://arxiv.org/abs/2409.01035) adapter (Si et al., "Unleashing the Power of Task-Specific
Directions in Parameter Efficient Fine-tuning", ICLR 2025), made with the `loradash` library on peft: LoRA of rank
{config.r} plus {config.num_directions} trainable scalars per adapted matrix along the task-specific directions of
its base weight, chosen after {config.prelaunch_steps} pre-launch steps ({config.prelaunch_clock} clock).{state}

`adapter_config.json` says `"peft_type": "LORADASH"`: stock peft refuses this folder rather than loading it as
plain LoRA without the dash term. Load it with `loradash` installed:

```python
import loradash  # registers LoRA-Dash with peft
from peft import PeftModel

model = PeftModel.from_pretrained(base_model, "path/to/this/folder")
# or loradash.from_pretrained(base_model, "path/to/this/folder"), which also checks that no tensor is missing
```

For a plain LoRA adapter of rank {config.r} + {config.num_directions} that computes the same function and loads
without `loradash` (stock peft, vLLM, diffusers):

```python
loradash.export_as_lora(model, "exported")  # peft folder; a diffusers model gets diffusers' layout
loradash.export_as_lora(model, "exported", layout="diffusers")  # pipeline.load_lora_weights("exported")
```
"""


def _tagged_front_matter(lines: list[str]) -> list[str]:
    """Add CARD_TAGS to the YAML front matter's `tags:` list (the block style huggingface_hub writes)."""
    if not lines or lines[0].strip() != "---" or "---" not in [x.strip() for x in lines[1:]]:
        return ["---", "tags:", *(f"- {t}" for t in CARD_TAGS), "---", *lines]
    end = 1 + [x.strip() for x in lines[1:]].index("---")
    head, rest = lines[1:end], lines[end:]
    if "tags:" in head:
        i = head.index("tags:") + 1
        present = set()
        while i < len(head) and head[i].startswith("- "):
            present.add(head[i][2:].strip().strip("'\""))
            i += 1
        head[i:i] = [f"- {t}" for t in CARD_TAGS if t not in present]
    else:
        head += ["tags:", *(f"- {t}" for t in CARD_TAGS)]
    return [lines[0], *head, *rest]


def update_model_card(directory: str, config: Any, status: AdapterStatus | None) -> None:
    """Add the LoRA-Dash section and tags to the README.md peft wrote (`create_or_update_model_card`) for the
    folder that holds `directory` (itself for the default adapter, its parent for a named one). A README that
    peft did not write (no `library_name: peft`) is left alone; saving again replaces the section."""
    for folder in (directory, os.path.dirname(os.path.normpath(directory))):
        path = os.path.join(folder, README)
        if os.path.isfile(path):
            break
    else:
        return
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if "library_name: peft" not in text:
        return
    lines = text.splitlines()
    if CARD_HEADING in lines:  # drop the section a previous save wrote (up to the next level-2 heading)
        start = lines.index(CARD_HEADING)
        stop = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        del lines[start:stop]
    lines = _tagged_front_matter(lines)
    end = 1 + [x.strip() for x in lines[1:]].index("---")
    # The section goes right after the title line that follows the front matter.
    title = next((i for i in range(end + 1, len(lines)) if lines[i].startswith("# ")), end)
    lines[title + 1 : title + 1] = ["", *_card_section(config, status).splitlines()]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
