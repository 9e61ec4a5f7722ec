"""Where a family's data lives when its config names no folder: the workspace convention shared by every family."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from experiments.harness.errors import MissingFileError
from experiments.harness.records import REPO_ROOT


def shared_data_dir(env_var: str, folder: str, *, what: str, hint: str, repo_root: Path = REPO_ROOT) -> Path:
    """`$env_var`, else `<repo>/../shared/data/<folder>` (data sits beside the checkout, never inside it).
    Raises FileNotFoundError naming the place and `hint` (how to get the data) when the variable names a missing or
    empty folder, or when it is unset and the default does not exist."""
    env = os.environ.get(env_var, "").strip()
    if env:
        path = Path(env).expanduser()
        if path.is_dir() and any(path.iterdir()):
            return path
        problem = "is an empty folder" if path.is_dir() else "is not a folder"
        raise MissingFileError(f"no {what} data directory: {env_var}={env} {problem}; {hint}")
    shared = repo_root.parent / "shared" / "data" / folder
    if shared.is_dir():
        return shared
    raise MissingFileError(
        f"no {what} data directory: {env_var} is unset and {shared} does not exist; {hint}"
    )


def resolve_data_dir(data_dir: str | None, default: Callable[[], Path]) -> Path:
    """A config's `data_dir`: None -> the family's `default()`; a relative path is relative to the repository."""
    if data_dir is None:
        return default()
    p = Path(data_dir)
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()
