"""Name -> object registries with errors that list the allowed names.

Every user-facing name (profile, dataset, model, attack, defense, schedule) is looked up in a
:class:`Registry`, so a typo fails at once with a message naming the bad value and the choices,
instead of an if/elif chain falling through somewhere deep in a run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name. A KeyError for mappings, a ValueError for argument checks."""

    def __str__(self) -> str:  # KeyError would repr() the message and wrap it in quotes
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping from lower-case names to objects, filled with :meth:`register`.

    Example:
        >>> SCHEDULES = Registry("schedule")
        >>> @SCHEDULES.register("constant")
        ... def constant(progress): return 1.0
        >>> SCHEDULES["cosine"]
        Traceback (most recent call last):
        UnknownNameError: unknown schedule 'cosine'; allowed: constant
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""
        if name != name.lower() or not name:
            raise ValueError(f"{self.kind} names are non-empty lower case, got {name!r}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")

        def add(item: T) -> T:
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self._items)}") from None

    def check(self, name: str) -> str:
        """Return ``name`` if it is registered, else raise :class:`UnknownNameError`."""
        self[name]
        return name

    def select(self, names: Sequence[str] | None, what: str | None = None) -> list[str]:
        """``names`` (a parameter called ``what``) as a list of registered names; None selects them all. A bare
        string, an empty list, a repeated or an unknown name is an error naming the value and the allowed names."""
        what = what or f"the {self.kind} names"
        if names is None:
            return list(self._items)
        allowed = ", ".join(self._items)
        if isinstance(names, str) or not isinstance(names, Sequence) or not names:
            raise ValueError(f"{what} must be None or a non-empty list of {self.kind} names, got {names!r}; "
                             f"allowed: {allowed}")
        repeated = sorted({n for n in names if list(names).count(n) > 1}, key=str)
        if repeated:
            raise ValueError(f"{what} names {', '.join(map(repr, repeated))} more than once; allowed: {allowed}")
        return [self.check(n) for n in names]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
