"""Notebook 06: how much a pruning defense prunes, chosen on the defender's clean data.

The student writes ``last_safe_amount(sweep)``: ``sweep`` is a list of (amount, clean accuracy) pairs in
increasing order of pruning, the first being the unpruned reference. It returns the last amount before the clean
accuracy first falls more than 10% (relative) below the reference's; the reference's amount when the very
first step already falls that far.
"""

from __future__ import annotations

from typing import Any

from ..defenses.common import select_amount
from .feedback import call, fail, keeps_rng, same_number, show, which_mistake

EXAMPLE = [[(0.0, 0.90), (0.1, 0.89), (0.2, 0.86), (0.3, 0.78), (0.4, 0.60)]]
THOROUGH = [
    [(0, 0.90), (1, 0.85), (2, 0.70), (3, 0.88), (4, 0.87)],  # a dip, then a recovery: the rule stops at the dip
    [(0, 0.50), (1, 0.47), (2, 0.44), (3, 0.42), (4, 0.30)],  # relative: the floor is 0.45, not 0.40
    [(0, 0.80), (1, 0.73), (2, 0.70), (3, 0.75)],  # 0.73 is within 10% of 0.80, 0.70 is not
    [(0, 0.90), (1, 0.50), (2, 0.40)],  # the first step already breaks the rule: nothing is pruned
    [(0, 0.90), (5, 0.90), (10, 0.89), (15, 0.88)],  # never breaks: the last amount tried
]


def reference(sweep: list[tuple[float, float]]) -> float:
    """The suite's clean rule (:func:`tsbd_utils.defenses.common.select_amount` with ``choice="clean"``)."""
    return select_amount([{"amount": a, "clean_acc": c} for a, c in sweep], choice="clean", acc_ratio=0.1)


def _absolute(sweep):
    chosen = sweep[0][0]
    for amount, acc in sweep[1:]:
        if acc < sweep[0][1] - 0.10:
            break
        chosen = amount
    return chosen


def _first_failing(sweep):
    for amount, acc in sweep[1:]:
        if acc < 0.9 * sweep[0][1]:
            return amount
    return sweep[-1][0]


def _last_passing_anywhere(sweep):
    return [amount for amount, acc in sweep if acc >= 0.9 * sweep[0][1]][-1]


MISTAKES = {
    "that allows 10 points of accuracy: the rule is relative, 10% of the reference accuracy": _absolute,
    "that is the first amount that breaks the rule: return the one before it": _first_failing,
    "that skips over a dip: the rule stops at the first amount that breaks it, even if later ones recover":
        _last_passing_anywhere,
}


@keeps_rng
def check(last_safe_amount: Any, *, thorough: bool = False) -> None:
    """Compare ``last_safe_amount`` with the suite's clean rule on sweeps that separate the usual mistakes."""
    for sweep in EXAMPLE + (THOROUGH if thorough else []):
        text = f"sweep={sweep}"
        got = call(last_safe_amount, "last_safe_amount", text, list(sweep))
        expected = reference(sweep)
        if not same_number(got, expected):
            hint = which_mistake(got, {k: f(sweep) for k, f in MISTAKES.items()}, same_number)
            fail(f"last_safe_amount({text})", show(expected), show(got), hint)
