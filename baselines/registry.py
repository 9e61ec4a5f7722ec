"""One registry for everything the harness finds by name: methods (`baselines`) and experiment families
(`experiments/<family>/`). It fails loudly (a duplicate name raises, an unknown name lists the known ones, as
lm-eval's registry does) and discovers its entries on first use, so that adding one is writing it, never
listing it somewhere else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, TypeVar

from .errors import UserError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes of one kind (subclasses of `base`) by their `name` class attribute.

    Args:
        kind: what the entries are, for messages ("method", "experiment family").
        base: the class every entry subclasses.
        unknown: the `UserError` subclass raised for an unknown name.
        discover: imports the modules that register the entries (called once, before the first lookup).
        check: further checks of a class being registered (raise ValueError naming the problem).
    """

    def __init__(
        self,
        kind: str,
        base: type,
        *,
        unknown: type[UserError],
        discover: Callable[[], None] | None = None,
        check: Callable[[T], None] | None = None,
    ):
        self.kind, self.base, self.unknown = kind, base, unknown
        self._discover, self._check = discover, check
        self._entries: dict[str, T] = {}
        self._discovered = discover is None

    def register(self, cls: T) -> T:
        """Class decorator: add `cls` under `cls.name`; a duplicate name or a failed check raises."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"registering a {self.kind} expects a {self.base.__name__} subclass, got {cls!r}")
        name = cls.__dict__.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{cls.__name__} must define a non-empty class attribute `name`")
        if name in self._entries and self._entries[name] is not cls:
            raise ValueError(
                f"{self.kind} {name!r} is already registered (by {self._entries[name].__qualname__})"
            )
        if self._check is not None:
            self._check(cls)
        self._entries[name] = cls
        return cls

    def _ensure_discovered(self) -> None:
        if not self._discovered:
            self._discovered = True  # before importing: a module that looks itself up does not recurse
            assert self._discover is not None
            self._discover()

    def names(self) -> list[str]:
        self._ensure_discovered()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        self._ensure_discovered()
        if name not in self._entries:
            raise self.unknown(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name]

    def snapshot(self) -> dict[str, T]:
        """A copy of the entries (tests register a class and restore the copy afterwards)."""
        self._ensure_discovered()
        return dict(self._entries)

    def restore(self, entries: dict[str, T]) -> None:
        self._entries = dict(entries)


def import_modules(package: str, folder: Path, *, skip: Iterable[str] = ()) -> None:
    """Import every module of `package` (the `.py` files of `folder`) except `skip`: the registering imports."""
    for info in pkgutil.iter_modules([str(folder)]):
        if not info.ispkg and info.name not in set(skip):
            importlib.import_module(f"{package}.{info.name}")
