"""Notebook 07: a question Table 1 answers, graded on the table the student's own run produced.

The student reads the table and sets two variables: ``most_removed``, the defense (a column of the table, not
"No defense") that brings the ASR under 20% on the most attacks, and ``removed_count``, on how many. Ties: any of the
tied defenses is right. The answer is checked against ``table`` itself, so it holds for every profile and seed.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import tables
from ..zoo.table1 import NO_DEFENSE
from .feedback import fail, keeps_rng, show

ASR_REMOVED = 0.2  # a backdoor counts as removed when its ASR is under 20%


def removed_per_defense(table: pd.DataFrame, no_defense: str) -> pd.Series:
    """How many attacks each defense column of ``table`` leaves with an ASR under :data:`ASR_REMOVED`."""
    asr = tables.metric(table, "ASR").drop(index=tables.AVERAGE, errors="ignore")
    return (asr.drop(columns=[no_defense], errors="ignore") < ASR_REMOVED).sum().astype(int)


@keeps_rng
def check(most_removed: Any, removed: Any, table: pd.DataFrame, *, no_defense: str = NO_DEFENSE,
          thorough: bool = False) -> None:
    """``most_removed`` must name a defense of ``table``; with ``thorough``, one that removes the most backdoors,
    and ``removed`` must be that number."""
    counts = removed_per_defense(table, no_defense)
    question = "most_removed, removed_count (which defense brings the ASR under 20% on the most attacks, on how many?)"
    if most_removed is Ellipsis or removed is Ellipsis:
        fail(question, "both variables set", f"most_removed={show(most_removed)}, removed_count={show(removed)}")
    if most_removed not in counts.index:
        fail(question, f"the name of a defense, one of {list(counts.index)}", show(most_removed),
             "copy the column name as the table writes it" if str(most_removed) != no_defense else
             "the no-defense column is the backdoored model: pick one of the defenses")
    if isinstance(removed, bool) or not isinstance(removed, int) or not 0 <= removed <= len(
            tables.metric(table, "ASR").drop(index=tables.AVERAGE, errors="ignore")):
        fail(question, "removed_count: a whole number of attacks", show(removed))
    if not thorough:
        return
    best = int(counts.max())
    leaders = list(counts[counts == best].index)
    if most_removed not in leaders:
        fail(question, f"one of {leaders} ({best} attacks each)",
             f"{most_removed!r}, which removes {int(counts[most_removed])}",
             "count, in each defense's column, the attacks whose ASR is under 20% (the middle number of a cell)")
    if removed != best:
        fail(question, f"removed_count = {best}", show(removed),
             "count the attacks, not the average row, whose ASR is under 20% in that column")
