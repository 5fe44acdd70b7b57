"""The paper's Table 1 and its labelled extras, assembled from the cache in one place (:func:`assemble_table1`).

Table 1 itself: no defense, the eight baselines of notebook 06 and TSBD of notebook 05. Beside it,
never mixed in: the trigger's floor on the clean model (notebook 01), the same-budget controls
(vanilla fine-tuning through TSBD's loop; FT and NAD at TSBD's epoch count, computed here once and
cached), the photometric-lift variants of notebook 05, and the oracle (test-set) pruning choices.

Notebook 07 and the grid (:mod:`tsbd_utils.grid`) both call :func:`assemble_table1` and write its exports with
:meth:`Table1.export`; ``make reproduce`` copies the Markdown export into README.md, and ``make book`` onto the
book's landing page (:mod:`tsbd_utils.exports`).

Example:
    >>> t1 = assemble_table1(S, ["badnets", "wanet"])
    >>> tables.cell_text(t1.table)                 # ACC / ASR / DER per attack and defense
    >>> t1.export(S.figures_dir)                   # 07_table1.{csv,md,tex}, 07_table1_extra.*
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import tables
from ..attacks import ATTACKS
from ..defenses import DEFENSES, TSBDConfig
from ..exports import table1_file
from ..session import Session
from ..tables import METRICS
from .defended import CURVE_IMAGES, MATCHABLE, defended_model, matched_config, tsbd_model, tsbd_runs
from .evaluation import evaluation_table, trigger_floor
from .trained import Defended, unlearned_model

NO_DEFENSE = "No defense"  # the backdoored models' column, as the paper labels it
FLOOR = "Clean model (trigger floor)"
# Table 1's baselines, in the paper's column order. Written out: a defense module added to the registry joins the
# table only when it is named here.
BASELINES = ("ft", "fp", "nad", "nc", "anp", "clp", "ibau", "rnp")
ORACLE_CHOICES = tuple(d for d in BASELINES if "choice" in {f.name for f in dataclasses.fields(DEFENSES[d].config)})
# The labelled extras computed by default (notebook 07's parameters, the grid's plan).
MATCHED = ("ft", "nad")  # fine-tuning baselines rerun at TSBD's stage-2 epoch count
ORACLES = ("fp", "anp")  # pruning baselines rerun with the test-set (oracle) choice
VANILLA = "vanilla FT (TSBD's loop)"  # the same-budget control: TSBD's stage 2 with alpha = 0
LIFTS = ("TSBD + lift", "vanilla FT + lift")  # notebook 05's photometric-lift variants (labels of tsbd_runs)


def _check_names(what: str, names: Sequence[str], allowed: Sequence[str], *, empty: bool = False) -> list[str]:
    """``names`` as a list: names of ``allowed``, none repeated, and at least one unless ``empty``; else an error
    naming the value and the allowed names."""
    if (isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names)
            or not (names or empty)):
        kind = "list" if empty else "non-empty list"
        raise ValueError(f"{what} must be a {kind} of names, got {names!r}; allowed: {', '.join(allowed)}")
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {bad}; allowed: {', '.join(allowed)}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"{what} {repeated} named more than once; allowed: {', '.join(allowed)}")
    return list(names)


def check_baselines(baselines: Sequence[str]) -> list[str]:
    """``baselines`` as a list, or an error naming the unknown ones and the allowed (Table 1's eight)."""
    return _check_names("baseline(s)", baselines, BASELINES)


def check_matched(defenses: Sequence[str] | None = None) -> list[str]:
    """The baselines to rerun at TSBD's epoch count (None: :data:`MATCHED`), checked: any of :data:`MATCHABLE`."""
    return _check_names("same-budget control(s)", MATCHED if defenses is None else defenses, MATCHABLE, empty=True)


def check_oracles(defenses: Sequence[str] | None = None) -> list[str]:
    """The baselines to rerun with the test-set choice (None: :data:`ORACLES`), checked: any of
    :data:`ORACLE_CHOICES`."""
    return _check_names("oracle choice(s)", ORACLES if defenses is None else defenses, ORACLE_CHOICES, empty=True)


def main_runs(
    session: Session, names: Sequence[str], baselines: Sequence[str] = BASELINES
) -> dict[str, dict[str, Defended]]:
    """Table 1's defended models by column title: the eight baselines (or those of ``baselines``, in Table 1's
    order), then TSBD; all cached."""
    check_baselines(baselines)
    runs = {DEFENSES[d].title: {n: defended_model(session, n, d) for n in names} for d in BASELINES if d in baselines}
    config = TSBDConfig.for_profile(session.profile)  # notebook 05's TSBD column (the key has its curve size)
    runs[DEFENSES["tsbd"].title] = {n: tsbd_model(session, n, config, curve_size=CURVE_IMAGES) for n in names}
    return runs


def matched_label(defense: str, epochs: int) -> str:
    """The column label of a baseline run at TSBD's epoch count."""
    return f"{DEFENSES[defense].title} at {epochs} epochs"


def oracle_label(defense: str) -> str:
    """The column label of a baseline whose pruning amount was chosen on the test set."""
    return f"{DEFENSES[defense].title} (oracle choice)"


def matched_runs(
    session: Session, names: Sequence[str], defenses: Sequence[str], epochs: int
) -> dict[str, dict[str, Defended]]:
    """``defenses`` (fine-tuning baselines) with their fine-tuning at ``epochs`` epochs; cached."""
    check_matched(defenses)
    configs = {d: matched_config(session, d, epochs) for d in defenses}
    return {matched_label(d, epochs): {n: defended_model(session, n, d, configs[d]) for n in names} for d in defenses}


def oracle_runs(session: Session, names: Sequence[str], defenses: Sequence[str]) -> dict[str, dict[str, Defended]]:
    """``defenses`` (FP, ANP, RNP) with BackdoorBench's test-set choice of how much to prune: an oracle
    no defender has, reported only as a labelled extra. Cached."""
    check_oracles(defenses)
    configs = {d: DEFENSES[d].for_profile(session.profile, choice="oracle") for d in defenses}
    return {oracle_label(d): {n: defended_model(session, n, d, configs[d]) for n in names} for d in defenses}


def floor_rows(session: Session, names: Sequence[str]) -> pd.DataFrame:
    """The clean model of notebook 00 on each attack's triggered images, as rows of
    :func:`.evaluation.evaluation_table` (method :data:`FLOOR`; no DER: it was never backdoored)."""
    rows = []
    for n in names:
        ev = trigger_floor(session, n)
        rows.append({"method": FLOOR, "attack": n, "ACC": ev["acc"], "ASR": ev["asr"], "RA": ev["ra"],
                     "DER": float("nan"), "seconds": float("nan")})
    return pd.DataFrame(rows, columns=["method", "attack", *METRICS, "seconds"])


def unlearning_seconds(session: Session, name: str, config: TSBDConfig | None = None) -> float:
    """Seconds of the clean unlearning behind TSBD's stage 1 on attack ``name`` (cached by notebook 02,
    so it is not in the TSBD run's own compute time)."""
    config = config or TSBDConfig.for_profile(session.profile)
    return float(sum(unlearned_model(session, name, "clean", config.unlearn).history.seconds))


def budget_summary(
    session: Session,
    defense: str,
    config: Any,
    runs: Mapping[str, Defended],
    extra_seconds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """What ``defense`` with ``config`` spent on each attack of ``runs``, summarised in one row: what it
    runs (on the first attack), optimizer steps and the images behind them (means over attacks), the
    latter against the published settings' on the same clean images (where a run stops early, at the
    point this run stopped), the clean images it read, and the measured compute seconds per attack (plus
    ``extra_seconds[attack]``, such as TSBD's cached unlearning)."""
    spec = DEFENSES[defense]
    images = len(session.splits.clean)
    published = spec.for_profile("paper")
    budgets = {n: spec.budget(config, images, d.record) for n, d in runs.items()}
    full = {n: spec.budget(published, images, d.record) for n, d in runs.items()}
    steps = pd.Series({n: b.steps for n, b in budgets.items()}, dtype=float)
    examples = pd.Series({n: b.examples for n, b in budgets.items()}, dtype=float)
    full_examples = pd.Series({n: b.examples for n, b in full.items()}, dtype=float)
    seconds = pd.Series({n: d.info.get("compute_seconds", float("nan")) for n, d in runs.items()}, dtype=float)
    if extra_seconds is not None:
        seconds = seconds + pd.Series(dict(extra_seconds), dtype=float).reindex(seconds.index)
    first = next(iter(budgets.values()))
    return {
        "runs (first attack)": first.passes,
        "optimizer steps": float(steps.mean()),
        "steps, min-max": f"{int(steps.min())}-{int(steps.max())}",
        "images behind the steps": float(examples.mean()),
        "published": float(full_examples.mean()),
        "share of published": float(examples.sum() / full_examples.sum()) if full_examples.sum() > 0 else None,
        "clean images": first.images,
        "seconds per attack": float(seconds.mean()),
    }


@dataclass
class Table1:
    """Table 1 and its labelled extras (fractions, :func:`~tsbd_utils.tables.table1`'s layout), the rows behind
    them (:func:`~.evaluation.evaluation_table`'s, every method in one frame: views of any columns are
    ``tables.table1(t1.rows, columns, t1.titles, metrics)``) and the defended models by column."""

    table: pd.DataFrame
    extra: pd.DataFrame | None  # None when assembled without extras
    rows: pd.DataFrame
    runs: dict[str, dict[str, Defended]]  # Table 1's defenses by column title, then attack
    extra_runs: dict[str, dict[str, Defended]]  # the extras' defended models (controls, variants, oracle choices)
    methods: list[str]  # Table 1's columns: No defense, the baselines, TSBD
    extras: list[str]  # the extras' columns: No defense, the floor, controls, variants, oracle choices
    groups: dict[str, list[str]]  # the extras' columns by kind: controls, variants, oracles
    titles: dict[str, str]  # attack name -> row title
    scale: str  # dataset, profile and seed, for captions
    lookups: tuple[int, int] = field(default=(0, 0))  # cache hits and lookups it took

    def export(self, folder: str | Path) -> dict[str, dict[str, Path]]:
        """Write Table 1 and the extras into ``folder`` under :mod:`tsbd_utils.exports`' names (CSV in percent at
        full precision, Markdown, LaTeX); return the paths by table and format."""
        written = {"table1": tables.write_table(self.table, folder, table1_file(folder).stem, caption=(
            f"Table 1 reproduced ({self.scale}): ACC / ASR / DER (%) per attack; "
            "average DER = mean of per-attack DERs"))}
        if self.extra is not None:
            written["extra"] = tables.write_table(self.extra, folder, table1_file(folder, extra=True).stem, caption=(
                f"Labelled extras, not part of Table 1 ({self.scale}): trigger floor, same-budget controls, lift "
                "variants, oracle (test-set) choices"))
        return written


def assemble_table1(
    session: Session,
    names: Sequence[str],
    baselines: Sequence[str] = BASELINES,
    *,
    metrics: Sequence[str] = tables.CELL_METRICS,
    extras: bool = True,
    matched: Sequence[str] = MATCHED,
    oracles: Sequence[str] = ORACLES,
) -> Table1:
    """Table 1 for attacks ``names`` x (no defense, ``baselines`` in Table 1's order, TSBD), cells ``metrics``;
    with ``extras`` also the labelled extras beside it: the clean model's trigger floor, the same-budget controls
    (vanilla FT through TSBD's loop; the ``matched`` baselines at TSBD's epoch count), notebook 05's lift variants
    and the ``oracles``' test-set choices. Everything is read from the cache, or computed and cached on a miss."""
    names = _check_names("attack(s)", names, list(ATTACKS))  # every name checked before anything is computed
    check_baselines(baselines)
    matched, oracles = check_matched(matched), check_oracles(oracles)
    before = len(session.cache.events)
    titles = {n: ATTACKS[n].title for n in names}
    runs = main_runs(session, names, baselines)
    rows = evaluation_table(session, runs, before=NO_DEFENSE)
    methods = [NO_DEFENSE, *runs]
    table = tables.table1(rows, methods, titles, metrics, before=NO_DEFENSE)
    extra, extra_runs, groups, extra_columns = None, {}, {}, []
    if extras:
        epochs = TSBDConfig.for_profile(session.profile).epochs
        stage2 = {n: tsbd_runs(session, n) for n in names}  # notebook 05's four stage-2 runs
        controls = {VANILLA: {n: stage2[n]["vanilla FT"] for n in names},
                    **matched_runs(session, names, matched, epochs)}
        variants = {label: {n: stage2[n][label] for n in names} for label in LIFTS}
        extra_runs = {**controls, **variants, **oracle_runs(session, names, oracles)}
        groups = {"controls": list(controls), "variants": list(variants),
                  "oracles": [oracle_label(d) for d in oracles]}
        rows = pd.concat([rows, floor_rows(session, names), evaluation_table(session, extra_runs)], ignore_index=True)
        extra_columns = [NO_DEFENSE, FLOOR, *extra_runs]
        extra = tables.table1(rows, extra_columns, titles, metrics, before=NO_DEFENSE)
        if "DER" in metrics:
            extra[(FLOOR, "DER")] = np.nan  # a clean model was never backdoored: no DER
    read = session.cache.events[before:]
    p = session.profile
    return Table1(table, extra, rows, runs, extra_runs, methods, extra_columns, groups, titles,
                  f"{p.dataset}, {p.name} profile, seed {session.seed}", (sum(e.hit for e in read), len(read)))
