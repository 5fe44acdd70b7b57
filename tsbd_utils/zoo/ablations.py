"""Notebook 08's runs: TSBD with one part changed at a time, NWC-FP, and stage 1 across n; all cached.

Every variant is TSBD as notebook 05 runs it (:func:`.defended.tsbd_runs`) with one thing changed: a
setting of :class:`~tsbd_utils.defenses.TSBDConfig`, the reinitialization scheme, the photometric lift,
the backdoored model (another poisoning ratio), or the session (another clean share or seed, through
:meth:`~tsbd_utils.session.Session.variant`). The unchanged run is notebook 05's own cache entry.

Two choices of n sit side by side, and only one of them is open to a defender. :func:`stage1_clean` reads
the defender's clean images alone (the clean rule, :func:`~tsbd_utils.defenses.reinit.choose_neuron_ratio`);
:func:`stage1_test` and :func:`oracle_scores` read the test set, and only through :func:`.evaluation.oracle_data`,
the labelled oracle path (:func:`~tsbd_utils.defenses.reinit.oracle_neuron_ratio`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import atomic_path
from ..attacks import ATTACKS, AttackConfig
from ..config import Profile
from ..defenses import DEFENSES, REINIT_SCHEMES, TSBDConfig, zero_reinit
from ..defenses.common import clean_accuracy
from ..defenses.fp import nwc_order
from ..defenses.reinit import OFFICIAL_SWEEP
from ..rng import SEED_MAX
from ..session import Session
from ..settings import above, at_least, check_ranges, each, in_range, one_of, replace_checked, settings
from ..shortcut import PhotometricConfig
from .defended import CURVE_IMAGES, defended_cached, defense_context, tsbd_model
from .evaluation import backdoor_evaluation, evaluate_cached, oracle_data, table_row
from .keys import backdoor_fields, defender_fields, model_fields, unlearn_config
from .trained import Defended, backdoored_model, unlearned_model, unlearning_outcome


@settings
class AblationPlan:
    """What notebook 08 runs: the attacks of each part and the values of each sweep (the profile's defaults:
    :meth:`for_profile`; quick fits 30 minutes on 2 CPU cores, paper is the full grid)."""

    attacks: tuple[str, ...]  # the parts that fine-tune: n after stage 2, m / r / alpha, schemes, clean share
    n_values: tuple[float, ...]  # n after stage 2 (the profile's n is always added)
    m_values: tuple[float, ...]
    r_values: tuple[float, ...]
    alpha_values: tuple[float, ...]
    clean_ratios: tuple[float, ...]  # the defender's clean share of the training set
    poison_attacks: tuple[str, ...]
    poison_ratios: tuple[float, ...]  # new backdoored models, except the attacks' default (10%)
    seed_attacks: tuple[str, ...]
    seeds: tuple[int, ...]  # each a whole new run: training subset, poisoning, model, defender's images
    sweep_images: int  # test images per subset behind stage 1's sweep of n (all 8 attacks x 11 values)

    def __post_init__(self) -> None:
        unit = each(in_range(0, 1), nonempty=True)
        share = each(in_range(0, 1, low_open=True, high_open=True), nonempty=True)
        attacks = each(one_of(ATTACKS), nonempty=True)
        check_ranges(
            self, n_values=unit, m_values=unit, r_values=each(at_least(0), nonempty=True), alpha_values=unit,
            clean_ratios=share, poison_ratios=share, seeds=each(in_range(0, SEED_MAX, kind=int)),
            sweep_images=above(0, int), attacks=attacks, poison_attacks=attacks, seed_attacks=attacks,
        )

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> AblationPlan:
        """The profile's plan with ``overrides`` (None keeps the default; lists become tuples). Its n values
        always hold the profile's n, the run of notebook 05."""
        base = cls(**_PLANS[profile.name])
        changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
        plan = replace_checked(base, **changes)
        n_values = tuple(sorted(set(plan.n_values) | {profile.tsbd_neuron_ratio}))
        return dataclasses.replace(plan, n_values=n_values)


_PAPER_FOUR = ("badnets", "blended", "lf", "ssba")  # the attacks of the paper's Tables 3 and 4
_PLANS: dict[str, dict[str, Any]] = {
    "smoke": dict(attacks=("badnets",), n_values=(0.1,), m_values=(0.7, 1.0), r_values=(0.05, 0.2),
                  alpha_values=(0.0, 0.7), clean_ratios=(0.05, 0.1), poison_attacks=("badnets",),
                  poison_ratios=(0.05, 0.1), seed_attacks=("badnets",), seeds=(0, 1), sweep_images=200),
    # quick: every new fine-tuning run costs about a minute on 2 cores and the seed spread alone ten, so each sweep
    # keeps the paper's value and the one that tells most (m 1.0 and alpha 0 are runs of other parts as well), and
    # n after stage 2 adds 0.1 to the profile's n and the model's own clean-rule n.
    "quick": dict(attacks=("badnets",), n_values=(0.1,), m_values=(0.7, 1.0),
                  r_values=(0.05, 0.2), alpha_values=(0.0, 0.7), clean_ratios=(0.01, 0.05),
                  poison_attacks=("badnets",), poison_ratios=(0.01, 0.1), seed_attacks=("badnets",),
                  seeds=(0, 1, 2), sweep_images=500),
    "paper": dict(attacks=_PAPER_FOUR, n_values=OFFICIAL_SWEEP[:-2], m_values=(0.3, 0.5, 0.7, 0.9, 1.0),
                  r_values=(0.01, 0.02, 0.05, 0.1, 0.2), alpha_values=(0.0, 0.3, 0.5, 0.7, 0.9, 1.0),
                  clean_ratios=(0.01, 0.02, 0.05, 0.1), poison_attacks=("badnets", "blended"),
                  poison_ratios=(0.01, 0.05, 0.1), seed_attacks=_PAPER_FOUR, seeds=(0, 1, 2), sweep_images=2000),
}


def tsbd_variant(
    session: Session,
    name: str,
    *,
    lift: bool = False,
    reinit: str = "zero",
    attack_config: AttackConfig | None = None,
    progress: bool = False,
    **changes: Any,
) -> Defended:
    """TSBD on attack ``name`` with ``changes`` to the profile's :class:`TSBDConfig` (``alpha=0``: vanilla
    fine-tuning; ``epochs=0``: stage 1 alone; ``neuron_ratio=0``: no stage 1), ``lift`` (the photometric lift
    of notebook 05), another stage-1 scheme or another backdoored model; cached. Notebook 05's own runs (TSBD
    and vanilla fine-tuning, :func:`.defended.tsbd_runs`) are asked as it asks them, with per-epoch curves, so
    they are its cache entries; the other variants skip the curves, which notebook 08 never shows (about a
    sixth of a run's time: 21 evaluations of a subset)."""
    default = TSBDConfig.for_profile(session.profile)
    config = replace_checked(default, **changes)
    as_in_05 = (not lift and reinit == "zero" and attack_config is None
                and config in (default, dataclasses.replace(default, alpha=0.0)))
    return tsbd_model(
        session,
        name,
        config,
        curve_size=CURVE_IMAGES if as_in_05 else 0,
        photometric=PhotometricConfig() if lift else None,
        progress=progress,
        reinit=REINIT_SCHEMES.check(reinit),
        attack_config=attack_config,
    )


def nwc_fp_model(session: Session, name: str, progress: bool = False) -> Defended:
    """NWC-FP on attack ``name``: FP (the profile's config) pruning the head's inputs by their neuron weight
    change under TSBD's clean unlearning, largest first, instead of by activation; cached."""
    spec = DEFENSES["fp"]
    config = spec.for_profile(session.profile)
    bd = backdoored_model(session, name, progress=progress)
    unlearned = unlearned_model(session, name, "clean", progress=progress)  # its outcome is part of the key

    def run():
        order = nwc_order(bd.model, unlearned.model)
        return spec.run(bd.model, defense_context(session, progress), config, order=order)

    fields = model_fields(
        session, "defended", attack=name, attack_config=bd.attack.config, defense="fp", config=config,
        order="nwc", **defender_fields(session), **unlearning_outcome(unlearned),
    )
    return defended_cached(session, fields, run)


def unlearning_check(session: Session, name: str, attack_config: AttackConfig | None = None) -> dict[str, Any]:
    """How stage 1's clean unlearning of attack ``name``'s model ended: its epochs, whether it met the stopping
    rule (clean accuracy <= 10%), whether it diverged (its weights overflowed; stage 1 then ranks the weight
    changes of its last finite epoch, see :func:`~tsbd_utils.unlearning.unlearn`), and the clean accuracy of
    the model stage 1 compares against (at most 10% when the rule fired)."""
    run = unlearned_model(session, name, "clean", attack_config=attack_config)
    return {
        "unlearning epochs": run.epochs,
        "reached 10%": run.reached,
        "diverged": run.diverged,
        "clean acc at end": run.history.epochs[-1]["clean_acc"] if run.history.epochs else float("nan"),
    }


def _sweep_key(session: Session, name: str, ratios: Sequence[float], weight_ratio: float) -> dict[str, Any]:
    bd = backdoored_model(session, name, progress=False)
    return {
        "stage1_of": backdoor_fields(session, name, bd.attack.config),
        "unlearn": unlearn_config(session.profile, "clean"),
        "ratios": [float(r) for r in ratios],
        "weight_ratio": float(weight_ratio),
        **defender_fields(session),
        **unlearning_outcome(unlearned_model(session, name, "clean")),
    }


def _stage1_models(session: Session, name: str, ratios: Sequence[float], weight_ratio: float):
    bd = backdoored_model(session, name, progress=False)
    unlearned = unlearned_model(session, name, "clean")
    return bd, ((float(n), zero_reinit(bd.model, unlearned.model, n, weight_ratio)[0]) for n in ratios)


def stage1_clean(
    session: Session, name: str, ratios: Sequence[float] = OFFICIAL_SWEEP, weight_ratio: float = 0.7
) -> dict[str, Any]:
    """Accuracy on the defender's clean images before stage 1 (``"before"``) and right after it at each n
    (``"after"``: ``[[n, acc], ...]``): all the clean rule of n may read. No test image is touched. Cached."""

    def compute() -> dict[str, Any]:
        clean, batch = session.splits.clean, session.profile.eval_batch_size
        bd, stage1 = _stage1_models(session, name, ratios, weight_ratio)
        after = [[n, clean_accuracy(model, clean, session.device, batch)] for n, model in stage1]
        return {"before": clean_accuracy(bd.model, clean, session.device, batch), "after": after}

    key = {**_sweep_key(session, name, ratios, weight_ratio), "on": "defender's clean images"}
    return session.cache.get_or_compute("evaluation", key, compute)


def stage1_test(
    session: Session, name: str, ratios: Sequence[float] = OFFICIAL_SWEEP, weight_ratio: float = 0.7,
    images: int = 1000,
) -> dict[str, Any]:
    """Test ACC and ASR before stage 1 (``"before"``: ``[acc, asr]``) and right after it at each n
    (``"after"``: ``[[n, acc, asr], ...]``), on the first ``images`` of the evaluation images, read through the
    labelled oracle path (:func:`.evaluation.oracle_data`): for the report and the oracle n only. Cached."""

    def compute() -> dict[str, Any]:
        bd, stage1 = _stage1_models(session, name, ratios, weight_ratio)
        oracle = oracle_data(session, bd.attack, size=images)
        batch = session.profile.eval_batch_size
        after = [[n, *oracle.evaluate(model, session.device, batch)] for n, model in stage1]
        return {"before": list(oracle.evaluate(bd.model, session.device, batch)), "after": after}

    p = session.profile
    key = {**_sweep_key(session, name, ratios, weight_ratio), "on": "test images (oracle)", "images": images,
           "test_size": p.test_size, "eval_size": p.eval_size}
    return session.cache.get_or_compute("evaluation", key, compute)


def oracle_scores(
    session: Session, name: str, runs: Mapping[float, Defended], attack_config: AttackConfig | None = None
) -> tuple[tuple[float, float], dict[float, tuple[float, float]]]:
    """Test (ACC, ASR) of the backdoored model and of each run (keyed by its n), read through the labelled
    oracle path (:func:`.evaluation.oracle_data`, the whole evaluation set): the inputs of
    :func:`~tsbd_utils.defenses.reinit.oracle_neuron_ratio` after stage 2. Cached."""
    bd = backdoored_model(session, name, attack_config, progress=False)
    oracle = oracle_data(session, bd.attack)
    p = session.profile

    def score(fields: dict[str, Any], model) -> tuple[float, float]:
        def compute() -> dict[str, Any]:
            acc, asr = oracle.evaluate(model, session.device, p.eval_batch_size)
            return {"acc": acc, "asr": asr}

        key = {"oracle_of": fields, "test_size": p.test_size, "eval_size": p.eval_size}
        value = session.cache.get_or_compute("evaluation", key, compute)
        return float(value["acc"]), float(value["asr"])

    before = score(backdoor_fields(session, name, bd.attack.config), bd.model)
    return before, {float(n): score(run.fields, run.model) for n, run in runs.items()}


def variant_table(
    session: Session, name: str, runs: Mapping[str, Defended], attack_config: AttackConfig | None = None
) -> pd.DataFrame:
    """One row per run (by label) on attack ``name``'s model (``attack_config``: another backdoored model):
    ACC, ASR, RA and DER against that model, and the run's seconds; the first row is the backdoored model."""
    bd = backdoored_model(session, name, attack_config, progress=False)
    base = backdoor_evaluation(session, name, attack_config)
    rows = [table_row("no defense", name, base, base, float("nan"))]  # DER 0.5 by definition
    for label, run in runs.items():
        ev = evaluate_cached(session, run.fields, run.model, bd.attack)
        rows.append(table_row(label, name, base, ev, run.info.get("compute_seconds", float("nan"))))
    # evaluation_table's rows, one attack: its method column is the run's label here
    return pd.DataFrame(rows).drop(columns="attack").rename(columns={"method": "run"})


def left_out(plan: AblationPlan, full: AblationPlan | None = None) -> list[str]:
    """What ``plan`` leaves out of ``full`` (default: the paper profile's grid), in words, one line per part."""
    full = full or AblationPlan(**_PLANS["paper"])
    lines = []
    for name, words in [("attacks", "attacks of the fine-tuning parts"), ("n_values", "n after stage 2"),
                        ("m_values", "values of m"), ("r_values", "values of r"), ("alpha_values", "values of alpha"),
                        ("clean_ratios", "clean shares"), ("poison_attacks", "attacks at other poisoning ratios"),
                        ("poison_ratios", "poisoning ratios"), ("seed_attacks", "attacks of the seed spread"),
                        ("seeds", "seeds")]:
        missing = [v for v in getattr(full, name) if v not in getattr(plan, name)]
        if missing:
            shown = [ATTACKS[v].title if isinstance(v, str) else f"{v:g}" for v in missing]
            lines.append(f"{words}: {', '.join(shown)}")
    return lines


def export(frames: Mapping[str, pd.DataFrame], directory: str | Path, prefix: str = "08_") -> list[Path]:
    """Write each table as ``<prefix><name>.csv`` in ``directory``, atomically; return the paths."""
    paths = []
    for name, frame in frames.items():
        path = Path(directory) / f"{prefix}{name}.csv"
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        paths.append(path)
    return paths
