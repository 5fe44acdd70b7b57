"""The grid's tables, built from the cache exactly as notebook 07 builds them (same zoo calls, same keys)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import tables, zoo
from ..attacks import ATTACKS
from ..defenses import DEFENSES, TSBDConfig
from ..session import Session
from .cells import MATCHED, ORACLES

VANILLA = "vanilla FT (TSBD's loop)"  # notebook 07's label of the same-budget control


@dataclass
class GridTables:
    """Table 1 (fractions, :func:`~tsbd_utils.tables.table1`'s layout), the extras beside it (None without
    them), the files written, and the cache lookups it took (all hits when every cell had finished)."""

    table1: pd.DataFrame
    extras: pd.DataFrame | None
    paths: dict[str, Path]
    hits: int
    lookups: int


def build_tables(
    S: Session, attacks: Sequence[str], baselines: Sequence[str], extras: bool, out: Path
) -> GridTables:
    """Table 1 for ``attacks`` x (no defense, ``baselines``, TSBD), and with ``extras`` notebook 07's labelled
    extras (trigger floor, same-budget controls, oracle choices) in one more table; written to ``out`` as
    ``table1`` and ``extras`` (CSV in percent, Markdown, LaTeX)."""
    before = len(S.cache.events)
    titles = {n: ATTACKS[n].title for n in attacks}
    runs = zoo.main_runs(S, attacks, baselines)
    long = zoo.evaluation_table(S, runs, before=zoo.NO_DEFENSE)
    table = tables.table1(long, [zoo.NO_DEFENSE, *runs], titles, tables.CELL_METRICS, before=zoo.NO_DEFENSE)
    paths = {"table1": tables.write_table(table, out, "table1", caption=f"Table 1 ({S.profile.name} profile)")["md"]}
    extra_table = None
    if extras:
        epochs = TSBDConfig.for_profile(S.profile).epochs
        controls = {VANILLA: {n: zoo.tsbd_runs(S, n)["vanilla FT"] for n in attacks},
                    **zoo.matched_runs(S, attacks, MATCHED, epochs),
                    **zoo.oracle_runs(S, attacks, ORACLES)}
        long_extra = pd.concat([zoo.floor_rows(S, attacks), zoo.evaluation_table(S, controls)])
        extra_table = tables.table1(long_extra, None, titles, tables.CELL_METRICS)
        caption = (f"Beside Table 1 ({S.profile.name} profile): the clean model's trigger floor, same-budget "
                   f"controls, and the {', '.join(DEFENSES[d].title for d in ORACLES)} oracle choices (test set)")
        paths["extras"] = tables.write_table(extra_table, out, "extras", caption=caption)["md"]
    read = S.cache.events[before:]
    return GridTables(table, extra_table, paths, sum(e.hit for e in read), len(read))
