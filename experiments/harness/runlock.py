"""A lock per run: `<record>.lock` beside the run's record, so that sweeps sharing a results folder (a user who
starts `make reproduce` twice, two cluster jobs) split the work instead of training one run twice or touching
each other's checkpoint.

The lock file is created with O_EXCL (one creator wins, also on NFS v3+) and holds its owner's pid and host. A
lock whose owner is a dead process of this host is stale: it is broken and taken. A lock of another host is
never broken here (its pid means nothing on this one): a run stays locked until that host's process removes it
or a person does.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from experiments.harness.errors import UserError


class RunLockedError(UserError, RuntimeError):
    """The run is being trained by another live process: skipped, never trained twice."""


def lock_path(record_path: str | Path) -> Path:
    p = Path(record_path)
    return p.with_name(p.name + ".lock")


def holder(record_path: str | Path) -> dict[str, Any] | None:
    """The owner of the run's lock ({"pid", "host"}) while a live process holds it; None when it is free or
    stale."""
    info = _read(lock_path(record_path))
    return None if info is None or _stale(info) else info


def _read(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or garbage: treated as held, not broken (see _stale)
    return info if isinstance(info, dict) else {}


def _stale(info: dict[str, Any]) -> bool:
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@contextmanager
def run_lock(record_path: str | Path) -> Iterator[None]:
    """Hold the run's lock for the block; RunLockedError when a live process holds it."""
    path = lock_path(record_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = _read(path)
            if info is None:
                continue  # released meanwhile: try again
            if not _stale(info):
                who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
                raise RunLockedError(
                    f"{record_path} is being run by {who} (lock {path.name}); skipped"
                ) from None
            # Stale: break it. Another process may break it at the same moment; only one O_EXCL create wins.
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    else:
        raise RunLockedError(f"{record_path}: its lock {path.name} keeps changing hands; skipped")
    try:
        yield
    finally:
        if _read(path) == json.loads(me):  # never remove a lock another process has taken since
            path.unlink(missing_ok=True)
