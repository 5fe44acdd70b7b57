"""Config dataclasses that check themselves: ``@settings`` and the type check every config runs first.

A config is a frozen dataclass of one method's settings. Built with a setting it does not have, it names
that setting and lists the allowed ones; built with a value of the wrong type (``epochs=True``,
``lr=float("inf")``, ``unlearn={...}`` where an UnlearnConfig is asked for), :func:`check_types` names the
field, the value and the type asked for. Range checks stay with each config, which knows its method.

Example:
    >>> from tsbd_utils.settings import settings, check_types
    >>> @settings
    ... class StepConfig:
    ...     lr: float = 0.01
    ...     def __post_init__(self) -> None:
    ...         check_types(self)
    >>> StepConfig(lrr=0.1)
    Traceback (most recent call last):
    ...
    tsbd_utils.settings.UnknownSettingError: unknown StepConfig setting(s) 'lrr'; allowed: lr
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_KINDS: dict[type, tuple[Callable[[Any], bool], str]] = {  # type -> (test, what the message asks for)
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an int"),  # a bool is never a number
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


def check_types(config: Any) -> None:
    """Every int, float (finite), bool or str field of a dataclass ``config`` holds that type, and a field
    typed as another config holds that config (``TSBDConfig(unlearn={...})`` is refused, not kept as a
    dict); ``| None`` allows None too. So ``u='3'``, ``epochs=True`` or ``lr=inf`` is named with the type
    asked for, not met later as a bare TypeError in a comparison or a diverged run. Python numbers only where
    an int is asked for (``int(n)`` a NumPy integer): settings go into cache keys. Called first in the
    ``__post_init__`` of every config; other annotations are left to those checks."""
    for f in dataclasses.fields(config):
        expected = _expected(_annotation(type(config), f))
        if expected is not None:
            test, wanted = expected
            value = getattr(config, f.name)
            require(test(value), f"{type(config).__name__}.{f.name} must be {wanted}, got {value!r}")


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
