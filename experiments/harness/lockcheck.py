"""The package versions of requirements.lock, and which installed packages or run records differ from them.

`python -m experiments.harness.lockcheck [LOCK]` prints the installed packages whose versions differ from the lock (what
`make test-latest` tests beyond it); `tables` labels the records made with other versions (`off_lock`).
Versions compare as releases: a local build label (`2.13.0+cpu`, `2.13.0+cu128`) is the same release.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def normalize(name: str) -> str:
    """PEP 503 names: `scikit_learn`, `Scikit-Learn` and `scikit.learn` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> str:
    return version.split("+", 1)[0]


@cache
def read_lock(path: str | Path = LOCK) -> dict[str, str]:
    """{normalized name: version} of the lock's pins; empty when there is no lock (an installed wheel)."""
    path = Path(path)
    if not path.is_file():
        return {}
    return {normalize(m[1]): m[2] for line in path.read_text().splitlines() if (m := _PIN.match(line))}


def off_lock(
    packages: Mapping[str, str], lock: Mapping[str, str] | None = None
) -> dict[str, tuple[str, str]]:
    """{name: (version, locked version)} for the packages whose release differs from the lock's."""
    lock = read_lock() if lock is None else lock
    out = {}
    for name, version in packages.items():
        locked = lock.get(normalize(name))
        if locked is not None and release(str(version)) != release(locked):
            out[name] = (str(version), locked)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lock = read_lock(argv[0] if argv else LOCK)
    if not lock:
        print(f"error: no lock at {argv[0] if argv else LOCK}", file=sys.stderr)
        return 2
    installed = {
        normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]
    }
    diff = off_lock({n: v for n, v in installed.items() if n in lock}, lock)
    new = sorted(set(installed) - set(lock) - {"loradash", "pip", "setuptools"})
    if not diff:
        print("every locked package is installed at its locked release")
    for name, (v, locked) in sorted(diff.items()):
        print(f"{name} {v} (lock {locked})")
    if new:
        print("installed, not in the lock: " + ", ".join(f"{n} {installed[n]}" for n in new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
