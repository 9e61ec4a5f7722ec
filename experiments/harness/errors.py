"""Every mistake a user can make, as subclasses of one base (`UserError`); the CLI maps the base to exit 2.

Each subclass keeps the built-in class it used to be (ValueError, FileNotFoundError, ...) as a second base, so
code that catches those still catches it.
"""

from __future__ import annotations

from pathlib import Path

from baselines.errors import UserError

__all__ = [
    "ConfigError",
    "BadDataError",
    "CorruptRecordError",
    "DivergedError",
    "IncompatiblePackagesError",
    "MissingFileError",
    "MissingPackageError",
    "UnknownFamilyError",
    "UsageError",
    "UserError",
]


class UsageError(UserError, ValueError):
    """A mistake on the command line (an option, a task a profile does not have, a results folder)."""


class ConfigError(UserError, ValueError):
    """A config problem, naming the file and the key."""

    def __init__(self, source: str | Path, key: str, problem: str):
        super().__init__(f"{source}: {key}: {problem}")
        self.source, self.key, self.problem = str(source), key, problem


class UnknownFamilyError(UserError, ValueError):
    """An experiment family no folder declares."""


class MissingFileError(UserError, FileNotFoundError):
    """A data, config or record file (or folder) that is not where the user said or the convention expects."""


class MissingPackageError(UserError, ImportError):
    """An optional package a config asks for (a tracker of `train.report_to`) that is not installed."""


class BadDataError(UserError, ValueError):
    """A data file that exists but does not parse (names the file, the item and the field)."""


class CorruptRecordError(UserError, ValueError):
    """A run record that cannot be read (a truncated write, a hand edit)."""


class DivergedError(UserError, FloatingPointError):
    """A run whose loss became non-finite: its record says "failed" and the next sweep retries it."""


class IncompatiblePackagesError(UserError, RuntimeError):
    """A failure inside a dependency while building a model whose files read: the installed versions, not the
    experiment file (`make setup` installs the locked ones)."""
