"""The runs behind the paper's Table 1 and its labelled extras, read from the cache (notebook 07).

Table 1 itself: no defense, the eight baselines of notebook 06 and TSBD of notebook 05. Beside it,
never mixed in: the trigger's floor on the clean model (notebook 01), the same-budget controls
(vanilla fine-tuning through TSBD's loop; FT and NAD at TSBD's epoch count, computed here once and
cached), the photometric-lift variants of notebook 05, and the oracle (test-set) pruning choices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..defenses import DEFENSES, TSBDConfig
from ..session import Session
from .defended import CURVE_IMAGES, Defended, defended_model, matched_config, tsbd_model
from .evaluation import METRICS, trigger_floor
from .trained import unlearned_model

NO_DEFENSE = "No defense"  # the backdoored models' column, as the paper labels it
FLOOR = "Clean model (trigger floor)"
BASELINES = tuple(d for d in DEFENSES if d != "tsbd")  # the registry keeps Table 1's column order
ORACLE_CHOICES = tuple(d for d in BASELINES if "choice" in {f.name for f in dataclasses.fields(DEFENSES[d].config)})


def check_baselines(baselines: Sequence[str]) -> list[str]:
    """``baselines`` as a list, or an error naming the unknown ones and the allowed (Table 1's eight)."""
    bad = [d for d in baselines if d not in BASELINES]
    if bad:
        raise ValueError(f"unknown baseline(s) {bad}; allowed: {', '.join(BASELINES)}")
    return list(baselines)


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
    configs = {d: matched_config(session, d, epochs) for d in defenses}
    return {matched_label(d, epochs): {n: defended_model(session, n, d, configs[d]) for n in names} for d in defenses}


def oracle_runs(session: Session, names: Sequence[str], defenses: Sequence[str]) -> dict[str, dict[str, Defended]]:
    """``defenses`` (FP, ANP, RNP) with BackdoorBench's test-set choice of how much to prune: an oracle
    no defender has, reported only as a labelled extra. Cached."""
    bad = [d for d in defenses if d not in ORACLE_CHOICES]
    if bad:
        raise ValueError(f"no oracle choice for {bad}; allowed: {', '.join(ORACLE_CHOICES)}")
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
