"""The paper's Table 1 built from the suite's results, its budgets and rankings, and its exports.

Every number comes from :func:`tsbd_utils.zoo.evaluation_table` (one row per method and attack,
fractions); nothing here measures or types a number. The layout is the paper's: one row per
attack plus their ``average`` (the mean of the per-attack values, so the average DER is the mean
of the per-attack DERs, as in the paper), one column group per method, each cell ACC / ASR / DER.

Example:
    >>> long = zoo.evaluation_table(S, {"FT": ft_runs, "TSBD": tsbd_runs}, before="No defense")
    >>> table = tables.table1(long, titles=titles, before="No defense")
    >>> tables.write_table(table, "figures", "07_table1", caption="...")
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .defenses import DEFENSES

METRICS = ("ACC", "ASR", "RA", "DER")  # the columns of zoo.evaluation_table, as the paper names them
CELL_METRICS = ("ACC", "ASR", "DER")  # the paper's cell; RA is an option (cell_metrics)
AVERAGE = "average"
# The paper's Table 1 (CIFAR-10, PreActResNet18): the backdoored models' average ACC and ASR (%). The
# defenses' averages are kept with each defense (``DefenseSpec.paper_average``).
PAPER_NO_DEFENSE = (91.34, 97.29)


def cell_metrics(ra: bool = False) -> tuple[str, ...]:
    """The metrics of a table cell: the paper's ACC / ASR / DER, with ``ra`` also RA (robust accuracy)."""
    if not isinstance(ra, bool):
        raise ValueError(f"ra (SHOW_RA) must be True or False, got {ra!r}")
    return ("ACC", "ASR", "RA", "DER") if ra else CELL_METRICS


def by_attack(
    long: pd.DataFrame, metrics_shown: Sequence[str] = ("ACC", "ASR", "DER"), titles: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """:func:`~tsbd_utils.zoo.evaluation_table` as rows of attacks (renamed by ``titles``) plus their ``average``, and
    columns ``(metric, method)`` in the order given. The average of each column is the mean of the
    per-attack values, as in the paper's Table 1 (its average DER is the mean of per-attack DERs)."""
    unknown = [m for m in metrics_shown if m not in METRICS + ("seconds",)]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; allowed: {', '.join(METRICS)}, seconds")
    methods = list(dict.fromkeys(long["method"]))
    attacks = list(dict.fromkeys(long["attack"]))
    wide = long.pivot(index="attack", columns="method", values=list(metrics_shown))
    wide = wide.reindex(index=attacks, columns=pd.MultiIndex.from_product([list(metrics_shown), methods]))
    if titles is not None:
        wide = wide.rename(index=dict(titles))
    # Column by column: a frame-wide mean sums each column in an order set by the frame's memory layout, so the same
    # column could average to another last digit in a table with more methods (Table 1 beside its extra rows).
    wide.loc[AVERAGE] = wide.apply(lambda col: col.dropna().to_numpy().mean() if col.notna().any() else np.nan)
    return wide


def table1(
    long: pd.DataFrame,
    methods: Sequence[str] | None = None,
    titles: Mapping[str, str] | None = None,
    metrics: Sequence[str] = CELL_METRICS,
    before: str | None = None,
) -> pd.DataFrame:
    """``long`` (:func:`~tsbd_utils.zoo.evaluation_table`) in Table 1's layout, fractions.

    Rows: the attacks (renamed by ``titles``) and ``average``; columns: ``(method, metric)`` for the
    ``methods`` in the order given (default: as they appear in ``long``). ``before`` names the
    no-defense method, whose DER is left empty as in the paper (it is 0.5 by definition).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; allowed: {', '.join(METRICS)}")
    present = list(dict.fromkeys(long["method"]))
    methods = present if methods is None else list(methods)
    missing = [m for m in methods if m not in present]
    if missing:
        raise ValueError(f"method(s) {missing} have no results; available: {', '.join(present)}")
    wide = by_attack(long[long["method"].isin(methods)], tuple(metrics), titles)
    table = wide.swaplevel(axis=1).reindex(columns=pd.MultiIndex.from_product([methods, list(metrics)]))
    table.columns.names = ["method", "metric"]
    table.index.name = "attack"
    if before is not None and "DER" in metrics:
        table[(before, "DER")] = np.nan
    return table


def paper_averages(methods: Sequence[str], no_defense: str) -> pd.DataFrame:
    """The paper's Table 1 averages (%, CIFAR-10) for the columns ``methods`` (defense titles, and
    ``no_defense`` for the backdoored models); NaN where the paper has no such column."""
    by_title = {spec.title: spec.paper_average for spec in DEFENSES.values()}
    by_title[no_defense] = (*PAPER_NO_DEFENSE, float("nan"))
    rows = {m: by_title.get(m) or (float("nan"),) * 3 for m in methods}
    return pd.DataFrame(rows, index=["paper ACC", "paper ASR", "paper DER"]).T


def metric(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """One metric of a :func:`table1` table: rows attacks (and average), columns methods."""
    return table.xs(name, axis=1, level="metric")


def ranking(table: pd.DataFrame, by: str = "DER", methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Each attack's ranking of the methods by ``by`` (1 = best; higher is better for ACC, RA and DER,
    lower for ASR; ties share the better rank), and each method's mean rank over the attacks."""
    values = metric(table, by).drop(index=AVERAGE, errors="ignore")
    if methods is not None:
        values = values[list(methods)]
    ranks = values.rank(axis=1, ascending=(by == "ASR"), method="min")
    ranks.loc["mean rank"] = ranks.mean()
    return ranks


def cell_text(table: pd.DataFrame, digits: int = 1, empty: str = "-") -> pd.DataFrame:
    """The table as the paper prints it: one string per method and attack, ``"ACC / ASR / DER"`` in percent."""
    methods = list(dict.fromkeys(table.columns.get_level_values("method")))

    def fmt(value: float) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return empty
        return f"{100 * value:.{digits}f}"

    text = pd.DataFrame(
        {m: [" / ".join(fmt(v) for v in table[m].loc[row]) for row in table.index] for m in methods},
        index=table.index,
    )
    text.columns.name = " / ".join(table[methods[0]].columns)
    return text


def to_markdown(text: pd.DataFrame) -> str:
    """A pipe table (GitHub Markdown) of a frame of strings, its index as the first column."""
    header = [str(text.index.name or ""), *map(str, text.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * len(text.columns)) + "|"]
    for row, values in text.iterrows():
        bold = "**" if row == AVERAGE else ""
        lines.append("| " + " | ".join([f"{bold}{row}{bold}", *(f"{bold}{v}{bold}" for v in values)]) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}"}


def _latex_escape(value: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(value))


def to_latex(text: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs ``table*`` of a frame of strings (needs ``\\usepackage{booktabs}``)."""
    columns = "l" + "c" * len(text.columns)
    out = io.StringIO()
    out.write("\\begin{table*}[t]\n\\centering\n\\scriptsize\n")
    out.write(f"\\caption{{{_latex_escape(caption)}}}\n\\label{{{label}}}\n")
    out.write(f"\\begin{{tabular}}{{{columns}}}\n\\toprule\n")
    out.write(" & ".join([_latex_escape(text.index.name or "")] + [_latex_escape(c) for c in text.columns]) + " \\\\\n")
    out.write("\\midrule\n")
    for row, values in text.iterrows():
        if row == AVERAGE:
            out.write("\\midrule\n")
        out.write(" & ".join([_latex_escape(row)] + [_latex_escape(v) for v in values]) + " \\\\\n")
    out.write("\\bottomrule\n\\end{tabular}\n\\end{table*}\n")
    return out.getvalue()


def write_table(
    table: pd.DataFrame, directory: str | Path, stem: str, caption: str, digits: int = 1
) -> dict[str, Path]:
    """Write ``<stem>.csv`` (every value in percent, full precision: :func:`read_table` gives it back),
    ``<stem>.md`` and ``<stem>.tex`` (the cells as the paper prints them) into ``directory``, atomically."""
    directory = Path(directory)
    text = cell_text(table, digits)
    paths = {kind: directory / f"{stem}.{kind}" for kind in ("csv", "md", "tex")}
    contents = {
        "csv": (100 * table).to_csv(),
        "md": f"{caption}\n\n" + to_markdown(text),
        "tex": to_latex(text, caption, f"tab:{stem}"),
    }
    for kind, path in paths.items():
        with atomic_path(path) as tmp:
            tmp.write_text(contents[kind])
    return paths


def read_table(path: str | Path) -> pd.DataFrame:
    """The CSV of :func:`write_table` as written: the same rows and columns, values in percent
    (exactly ``100 * table``)."""
    frame = pd.read_csv(path, header=[0, 1], index_col=0)
    frame.columns.names = ["method", "metric"]
    frame.index.name = "attack"
    return frame


def percent_cells(table: pd.DataFrame) -> dict[str, dict[str, dict[str, float | None]]]:
    """A :func:`table1` table as JSON: ``{method: {attack: {metric: percent}}}``, None where a cell is empty."""
    return {m: {a: {k: (None if pd.isna(v) else float(100 * v)) for k, v in table.loc[a, m].items()}
                for a in table.index} for m in dict.fromkeys(table.columns.get_level_values("method"))}
