"""Checkpoints of a run in progress: a killed run resumes where it stopped and writes the record an
uninterrupted run writes (bitwise on the CPU).

`<record>.ckpt/` holds `state-<step>.safetensors` (the model's trainable parameters and buffers, which include
LoRA-Dash's launch state; the optimizer's state; the best checkpoint so far; the torch RNG states) and
`checkpoint.json` (the rest: step, micro-batches drawn, examples seen, the validation curve, the learning
rates, the best score and step, the scheduler's, accelerator's and method's state, python's and numpy's RNG
states, and whose checkpoint it is: config hash, seed, lr). The JSON is written last, atomically, and names its
tensor file, so a kill at any moment leaves the previous checkpoint or the new one; older tensor files are
removed after. The data position is the number of micro-batches drawn: a resumed run fast-forwards a freshly
seeded loader by that many, so its generator stands where it stood (across epochs too).
Only safetensors and JSON are read back: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from experiments.harness.records import write_atomic

FORMAT = 1
META = "checkpoint.json"


def checkpoint_dir(record_path: str | Path) -> Path:
    """`<record>.ckpt/` beside the run's record."""
    p = Path(record_path)
    return p.with_name(p.name + ".ckpt")


@dataclass
class Progress:
    """The loop's own counters and what it has recorded so far."""

    step: int = 0  # optimizer steps done
    micro_batches: int = 0  # batches drawn from the training loader
    examples: int = 0
    train_time_s: float = 0.0
    curve: list[dict[str, float]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    best_score: float | None = None
    best_step: int | None = None


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    meta = {
        "python": [version, list(state), gauss],
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True).contiguous()


def save(
    directory: Path,
    *,
    owner: dict[str, Any],
    progress: Progress,
    model_state: dict[str, torch.Tensor],
    best_state: dict[str, torch.Tensor] | None,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    method: Any,
) -> None:
    """Write a checkpoint (see the module docstring). `owner`: config hash, seed and lr of the run."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": _cpu(v) for k, v in model_state.items()}
    tensors |= {f"best.{k}": _cpu(v) for k, v in (best_state or {}).items()}
    opt = optimizer.state_dict()
    opt_values: dict[str, dict[str, Any]] = {}
    for pid, state in opt["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = _cpu(value)
            else:
                opt_values.setdefault(str(pid), {})[name] = value
    rng_tensors, rng_meta = _rng_state()
    tensors |= rng_tensors
    name = f"state-{progress.step}.safetensors"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    scaler = getattr(accelerator, "scaler", None)
    meta = {
        "format": FORMAT,
        "owner": owner,
        "tensors": name,
        "progress": asdict(progress),
        "optimizer": {"param_groups": opt["param_groups"], "values": opt_values},
        "scheduler": scheduler.state_dict(),
        "accelerator_step": int(accelerator.step),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "method": method.state_dict(),
        "rng": rng_meta,
    }
    write_atomic(directory / META, meta)  # the commit point
    for old in directory.iterdir():  # earlier tensor files, and temp files of a write that was killed
        if old.name not in (name, META):
            old.unlink(missing_ok=True)


META_KEYS = {"format", "owner", "tensors", "progress", "optimizer", "scheduler", "accelerator_step", "scaler",
             "method", "rng"}  # fmt: skip
PROGRESS_TYPES = {"step": int, "micro_batches": int, "examples": int, "train_time_s": (int, float), "curve": list,
                  "lrs": list, "best_score": (int, float, type(None)), "best_step": (int, type(None))}  # fmt: skip


def _check_shape(meta: Any) -> None:
    """A checkpoint.json that parses but is not one this module writes (a hand edit, another version) raises
    ValueError, so that it is set aside like an unparseable one instead of failing the run on every retry."""
    if not isinstance(meta, dict) or set(meta) != META_KEYS:
        raise ValueError(f"keys {sorted(meta) if isinstance(meta, dict) else type(meta).__name__}, expected "
                         f"{sorted(META_KEYS)}")  # fmt: skip
    progress = meta["progress"]
    if not isinstance(progress, dict) or set(progress) != set(PROGRESS_TYPES):
        raise ValueError(f"progress keys {sorted(progress) if isinstance(progress, dict) else progress!r}")
    for key, tp in PROGRESS_TYPES.items():
        if not isinstance(progress[key], tp) or isinstance(progress[key], bool):
            raise ValueError(f"progress.{key} is {type(progress[key]).__name__}")
    rng = meta["rng"]
    if not isinstance(rng, dict) or set(rng) != {"python", "numpy"}:
        raise ValueError("rng must hold the python and numpy states")
    if (
        not isinstance(meta["tensors"], str)
        or "/" in meta["tensors"]
        or not isinstance(meta["optimizer"], dict)
    ):
        raise ValueError("tensors must name a file beside it; optimizer must be a mapping")


@dataclass
class Restored:
    progress: Progress
    model_state: dict[str, torch.Tensor]
    best_state: dict[str, torch.Tensor] | None
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def load(directory: Path, owner: dict[str, Any]) -> Restored | None:
    """The checkpoint in `directory` if it belongs to `owner` (config hash, seed, lr) and reads back whole;
    None (with a warning when one was there but unusable) otherwise."""
    meta_path = directory / META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("owner") != owner:
            warnings.warn(f"{directory}: checkpoint of another config ({meta.get('owner')}); starting afresh",
                          stacklevel=2)  # fmt: skip
            return None
        _check_shape(meta)
        tensors = load_file(directory / meta["tensors"])
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:  # truncated, foreign or absent
        warnings.warn(
            f"{directory}: unreadable checkpoint ({type(e).__name__}: {e}); starting afresh", stacklevel=2
        )
        return None
    model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    best = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
    progress = Progress(**meta["progress"])
    return Restored(progress, model_state, best or None, meta, tensors)


def restore(
    restored: Restored,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    method: Any,
) -> None:
    """Put the model, optimizer, scheduler, accelerator and method back where the checkpoint was taken. The RNG
    states are restored separately (`restore_rng`), after the loader has been fast-forwarded."""
    missing, unexpected = model.load_state_dict(restored.model_state, strict=False)
    expected = set(restored.model_state)
    if unexpected or expected - set(model.state_dict()):
        raise RuntimeError(f"checkpoint does not fit the model: unexpected {sorted(unexpected)[:3]}")
    meta, tensors = restored.meta, restored.tensors
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, values in meta["optimizer"]["values"].items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    accelerator.step = meta["accelerator_step"]
    if meta["scaler"] is not None and getattr(accelerator, "scaler", None) is not None:
        accelerator.scaler.load_state_dict(meta["scaler"])
    method.load_state_dict(meta["method"])


def restore_rng(restored: Restored) -> None:
    _set_rng_state(restored.tensors, restored.meta["rng"])


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
