"""Config dataclasses that check themselves: ``@settings``, and :func:`check_ranges`, which every config runs first.

A config is a frozen dataclass of one method's settings. Built with a setting it does not have, it names
that setting and lists the allowed ones. Its ``__post_init__`` calls :func:`check_ranges` with one small
rule per ranged setting (:func:`at_least`, :func:`above`, :func:`in_range`, :func:`optional`, :func:`each`,
:func:`one_of`); a value of the wrong type (``epochs=True``, ``lr=float("inf")``, ``unlearn={...}`` where an
UnlearnConfig is asked for) or out of its range is refused in one ValueError naming every bad field, its value
and what is allowed. Checks across fields, and registry lookups, stay with each config.

Example:
    >>> from tsbd_utils.settings import settings, check_ranges, at_least, in_range
    >>> @settings
    ... class StepConfig:
    ...     lr: float = 0.01
    ...     epochs: int = 1
    ...     def __post_init__(self) -> None:
    ...         check_ranges(self, lr=in_range(0, 1, low_open=True), epochs=at_least(1, int))
    >>> StepConfig(lrr=0.1)
    Traceback (most recent call last):
    ...
    tsbd_utils.settings.UnknownSettingError: unknown StepConfig setting(s) 'lrr'; allowed: lr, epochs
    >>> StepConfig(lr=0.0, epochs=True)
    Traceback (most recent call last):
    ...
    ValueError: StepConfig.lr must be in (0, 1], got 0.0; StepConfig.epochs must be an int >= 1, got True
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # a bool is never a number


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_KINDS: dict[type, tuple[Callable[[Any], bool], str]] = {  # type -> (test, what the message asks for)
    int: (_int, "an int"),
    float: (_finite_number, "a finite number"),  # inf would pass every range check below and break training
    bool: (lambda v: isinstance(v, bool), "True or False"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _annotation(cls: type, f: dataclasses.Field) -> Any:
    """The field's annotation as an object (annotations are strings here); None where it cannot be read."""
    if not isinstance(f.type, str):
        return f.type
    module = sys.modules.get(cls.__module__)
    try:
        return eval(f.type, dict(vars(module)) if module else {})  # noqa: S307 - the class's own annotation
    except Exception:  # a name imported for type checkers only: left to the config's own checks
        return None


def _expected(hint: Any) -> tuple[Callable[[Any], bool], str] | None:
    """(test, words) for an int / float / bool / str / config-dataclass annotation, optionally ``| None``."""
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    rest = [m for m in members if m is not type(None)]
    if len(rest) != 1:
        return None
    kind = rest[0]
    if kind in _KINDS:
        test, words = _KINDS[kind]
    elif isinstance(kind, type) and dataclasses.is_dataclass(kind):
        article = "an" if kind.__name__[0] in "AEIOU" else "a"
        test, words = (lambda v, kind=kind: isinstance(v, kind)), f"{article} {kind.__name__}"
    else:
        return None
    if len(rest) < len(members):
        return (lambda v, test=test: v is None or test(v)), f"{words} or None"
    return test, words


@dataclass(frozen=True)
class Rule:
    """The values one setting allows: ``test`` and the words for them, as :func:`check_ranges` says them."""

    test: Callable[[Any], bool]
    allowed: str  # "in [0, 1)", "an int >= 1", "one of clean, oracle"
    many: str = ""  # the same of a tuple's items (:func:`each`): "numbers in [0, 1)", "ints >= 1"
    typed: str = ""  # said for a value that is no finite number at all: "a finite number in [0, 1)"

    def __call__(self, value: Any) -> bool:
        return self.test(value)

    def describe(self, value: Any) -> str:
        return self.typed if self.typed and not _finite_number(value) else self.allowed


def _bound(kind: type, words: str, ok: Callable[[Any], bool]) -> Rule:
    """An int (never a bool) or a finite number, and ``ok``; ``words`` says ``ok`` ("> 0")."""
    if kind is int:
        return Rule(lambda v: _int(v) and ok(v), f"an int {words}", f"ints {words}")
    if kind is not float:
        raise TypeError(f"a range rule takes int or float (any finite number), got {kind!r}")
    return Rule(lambda v: _finite_number(v) and ok(v), words, f"numbers {words}", f"a finite number {words}")


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"  # an int bound in full (2**32 - 1, not 4.29497e+09)


def at_least(low: float, kind: type = float) -> Rule:
    """``>= low``; ``kind`` int asks for an int (never a bool), float for any finite number."""
    return _bound(kind, f">= {_num(low)}", lambda v: v >= low)


def above(low: float, kind: type = float) -> Rule:
    """``> low``; ``kind`` as in :func:`at_least`."""
    return _bound(kind, f"> {_num(low)}", lambda v: v > low)


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False, kind: type = float) -> Rule:
    """``low <= v <= high`` ("in [low, high]"); an open end leaves that bound out ("in (low, high)")."""
    words = f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    return _bound(kind, words, lambda v: (low < v if low_open else low <= v) and (v < high if high_open else v <= high))


positive = above(0)
non_negative = at_least(0)


def optional(rule: Rule) -> Rule:
    """None, or a value ``rule`` allows."""
    typed = f"None or {rule.typed}" if rule.typed else ""
    return Rule(lambda v: v is None or rule(v), f"None or {rule.allowed}", f"None or {rule.many}", typed)


def each(rule: Rule, *, length: int | None = None, nonempty: bool = False) -> Rule:
    """A tuple (not a list: configs are hashable) whose every item ``rule`` allows, of ``length`` items if given."""
    size = f"{length} " if length is not None else ""
    words = f"a {'non-empty ' if nonempty else ''}tuple of {size}{rule.many or rule.allowed}"
    return Rule(lambda v: isinstance(v, tuple) and (length is None or len(v) == length) and (bool(v) or not nonempty)
                and all(rule(x) for x in v), words)


def one_of(choices: Iterable[str]) -> Rule:
    """One of the strings ``choices``."""
    allowed = tuple(choices)
    return Rule(lambda v: isinstance(v, str) and v in allowed, f"one of {', '.join(allowed)}",
                f"names from {', '.join(allowed)}")


def check_ranges(config: Any, /, **rules: Rule) -> None:
    """Check every field of the dataclass ``config`` at once: its type (an int / float / bool / str / config
    annotation, optionally ``| None``, as :func:`check_types` says), and the ``rules`` of the ranged ones.
    Raises one ValueError naming every bad field, its value and what is allowed ("TrainConfig.lr must be >= 0,
    got -1; TrainConfig.momentum must be in [0, 1), got 1.0"). Called first in the ``__post_init__`` of every
    config. Ints are never bools, numbers are finite; Python numbers only where an int is asked for (``int(n)``
    a NumPy integer): settings go into cache keys."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(rules) - names)
    if unknown:
        raise TypeError(f"range rules for settings that {type(config).__name__} does not have: {', '.join(unknown)}")
    problems = []
    for f in dataclasses.fields(config):
        value, rule, expected = getattr(config, f.name), rules.get(f.name), _expected(_annotation(type(config), f))
        typed = expected is None or expected[0](value)
        if rule is not None and not rule(value):
            problems.append(f"{f.name} must be {rule.describe(value)}, got {value!r}")
        elif not typed:
            problems.append(f"{f.name} must be {expected[1]}, got {value!r}")
    if problems:
        raise ValueError("; ".join(f"{type(config).__name__}.{p}" for p in problems))


def check_types(config: Any) -> None:
    """:func:`check_ranges` without ranges: every int, float (finite), bool or str field of ``config`` holds that
    type, and a field typed as another config holds that config (``TSBDConfig(unlearn={...})`` is refused, not
    kept as a dict); ``| None`` allows None too. For a config whose settings have no ranges."""
    check_ranges(config)


class UnknownSettingError(ValueError, TypeError):
    """A setting a config does not have. A ValueError for argument checks, a TypeError where Python's own
    "unexpected keyword argument" is caught."""


def _check_setting_names(cls: type, names: Any) -> None:
    allowed = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in names if k not in allowed]
    if unknown:
        raise UnknownSettingError(
            f"unknown {cls.__name__} setting(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
        )


T = typing.TypeVar("T")


@typing.dataclass_transform(frozen_default=True)
def settings(cls: type[T]) -> type[T]:
    """``@dataclass(frozen=True)`` for a config: its constructor names an unknown setting and lists the allowed
    ones (``TSBDConfig(radios=0.1)``), where a plain dataclass says only "unexpected keyword argument"."""
    cls = dataclass(frozen=True)(cls)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        _check_setting_names(cls, kwargs)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def replace_checked(config: Any, **overrides: Any) -> Any:
    """``dataclasses.replace`` that names an unknown setting and lists the allowed ones (instead of a TypeError)."""
    _check_setting_names(type(config), overrides)
    return dataclasses.replace(config, **overrides) if overrides else config
