"""How an exercise check talks to a student: what was expected, on what input, what came back.

Every check of :mod:`tsbd_utils.exercises` fails with an :class:`ExerciseFailed` (an ``AssertionError``, which
is what otter-grader reports as a failed test case) whose message has three parts: the call that was made,
the expected answer and the answer that came back, plus a hint when the answer matches a known mistake.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch


class ExerciseFailed(AssertionError):
    """A check's verdict, worded for the student who wrote the function under test."""


F = TypeVar("F", bound=Callable[..., Any])


def keeps_rng(check: F) -> F:
    """Run a check under a forked global RNG: checking an answer never changes the random draws of the notebook
    cells after it (the results of the notebook are the same with and without its exercises)."""

    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            return check(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def show(value: Any, items: int = 5) -> str:
    """A short, readable description of a value: tensors by shape, dtype and first values, numbers rounded."""
    if value is None:
        return "None (does the function end with a return statement?)"
    if value is Ellipsis:
        return "... (the exercise is not filled in yet)"
    if isinstance(value, torch.Tensor):
        flat = value.detach().flatten()[:items].tolist()
        head = ", ".join(_number(v) for v in flat) + (", ..." if value.numel() > items else "")
        return f"tensor of shape {tuple(value.shape)}, dtype {str(value.dtype).replace('torch.', '')}: [{head}]"
    if isinstance(value, np.ndarray):
        return "numpy " + show(torch.from_numpy(np.ascontiguousarray(value)), items)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        if isinstance(value, Mapping):
            keys = list(value)
            head = ", ".join(repr(k) for k in keys[:items]) + (", ..." if len(keys) > items else "")
            return f"{type(value).__name__} with {len(keys)} keys: {head}"
        text = repr(value)
        return text if len(text) <= 120 else text[:117] + "..."
    return _number(value)


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.6g}"


def fail(call: str, expected: str, got: str, hint: str | None = None) -> NoReturn:
    """Raise the verdict: ``call`` (the input, as code), then the expected and the returned answer."""
    lines = [call, f"  expected: {expected}", f"  got:      {got}"]
    if hint:
        lines.append(f"  hint: {hint}")
    raise ExerciseFailed("\n".join(lines))


def call(function: Any, name: str, args_text: str, *args: Any, **kwargs: Any) -> Any:
    """Call the student's ``function`` (named ``name`` in the notebook); a missing function or an exception
    becomes a verdict that names the call, instead of a traceback into the checking code."""
    text = f"{name}({args_text})"
    if function is None:
        fail(text, f"a function named {name}", "nothing: the name is not defined", f"run the cell that defines {name}")
    if not callable(function):
        fail(text, f"{name} to be a function", show(function))
    try:
        return function(*args, **kwargs)
    except ExerciseFailed:
        raise
    except Exception as error:  # the student's code: any failure is reported, not propagated
        fail(text, "a result", f"{type(error).__name__}: {error}")


def which_mistake(got: Any, mistakes: Mapping[str, Any], same: Callable[[Any, Any], bool]) -> str | None:
    """The description of the first known mistake whose result equals ``got`` (by ``same``), if any."""
    for description, result in mistakes.items():
        try:
            if same(got, result):
                return description
        except (TypeError, ValueError, RuntimeError):  # a result of another type or shape is not this mistake
            continue
    return None


def same_number(a: Any, b: Any, tol: float = 1e-6) -> bool:
    """Two real numbers equal to ``tol`` (absolute and relative); False for anything that is not a number."""
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def same_tensor(a: Any, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """A tensor (or array) of ``b``'s shape whose values match ``b``'s to ``tol``; exact for bool and int."""
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor) or tuple(a.shape) != tuple(b.shape):
        return False
    a, b = a.detach().cpu(), b.detach().cpu()
    if b.dtype == torch.bool or not b.is_floating_point():
        return bool(torch.equal(a.to(b.dtype), b))
    return bool(torch.allclose(a.double(), b.double(), rtol=tol, atol=tol))
