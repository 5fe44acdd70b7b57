"""The grid's tables: Table 1 and its extras assembled from the cache by :func:`tsbd_utils.zoo.assemble_table1`,
the function notebook 07 calls, and exported under the same file names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import zoo
from ..session import Session


@dataclass
class GridTables:
    """Table 1 (fractions, :func:`~tsbd_utils.tables.table1`'s layout), the extras beside it (None without
    them), the Markdown files written, and the cache lookups it took (all hits when every cell had finished)."""

    table1: pd.DataFrame
    extras: pd.DataFrame | None
    paths: dict[str, Path]
    hits: int
    lookups: int


def build_tables(
    S: Session, attacks: Sequence[str], baselines: Sequence[str], extras: bool, out: Path
) -> GridTables:
    """Table 1 for ``attacks`` x (no defense, ``baselines``, TSBD), and with ``extras`` notebook 07's labelled
    extras (trigger floor, same-budget controls, lift variants, oracle choices) in one more table; written to
    ``out`` as notebook 07 writes them (:meth:`~tsbd_utils.zoo.Table1.export`)."""
    t1 = zoo.assemble_table1(S, attacks, baselines, extras=extras)
    written = t1.export(out)
    return GridTables(t1.table, t1.extra, {k: v["md"] for k, v in written.items()}, *t1.lookups)
