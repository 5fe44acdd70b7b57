"""Notebook 00: the defense effectiveness rating (DER) from two (ACC, ASR) pairs.

The student writes ``der_from_pairs(before, after)``: ``before`` and ``after`` are (ACC, ASR) pairs of
fractions, for the backdoored and the defended model; it returns the DER as a fraction in [0, 1].
"""

from __future__ import annotations

from typing import Any

from ..metrics import defense_effectiveness_rating
from .feedback import call, fail, keeps_rng, same_number, show, which_mistake

# (before, after) pairs: the first is the worked example of the notebook's style, the rest cover the clipping.
EXAMPLE = [((0.90, 1.00), (0.88, 0.10))]
THOROUGH = [
    ((0.9134, 0.9729), (0.9170, 0.0218)),  # the paper's average rows: accuracy *rises*, the drop is clipped at 0
    ((0.90, 0.20), (0.85, 0.60)),  # the defense *raises* the ASR: no credit, the ASR drop is clipped at 0
    ((0.91, 0.97), (0.91, 0.97)),  # nothing changed: exactly one half
    ((0.91, 0.99), (0.10, 0.00)),  # a destroyed model: the ASR is gone and so is the accuracy
]

MISTAKES = {
    "no clipping: an accuracy gain (or an ASR rise) must count as 0, max(0, drop)":
        lambda b, a: ((b[1] - a[1]) - (b[0] - a[0]) + 1) / 2,
    "a percentage: return a fraction in [0, 1], as the suite's metrics do": lambda b, a: 100 * reference(b, a),
    "the two drops swapped: DER rewards the ASR drop and charges the ACC drop":
        lambda b, a: (max(0.0, b[0] - a[0]) - max(0.0, b[1] - a[1]) + 1) / 2,
    "the + 1 and the halving: an unchanged model scores 0.5":
        lambda b, a: max(0.0, b[1] - a[1]) - max(0.0, b[0] - a[0]),
}


def reference(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The suite's DER (:func:`tsbd_utils.metrics.defense_effectiveness_rating`) on two (ACC, ASR) pairs."""
    return defense_effectiveness_rating(before[0], before[1], after[0], after[1])


@keeps_rng
def check(der_from_pairs: Any, *, thorough: bool = False) -> None:
    """Compare ``der_from_pairs`` with the suite's DER on the example (and, ``thorough``, the edge) cases."""
    for before, after in EXAMPLE + (THOROUGH if thorough else []):
        text = f"before={before}, after={after}"
        got = call(der_from_pairs, "der_from_pairs", text, before, after)
        expected = reference(before, after)
        if not same_number(got, expected):
            hint = which_mistake(got, {k: f(before, after) for k, f in MISTAKES.items()}, same_number)
            fail(f"der_from_pairs({text})", show(expected), show(got), hint)
