"""How every reported number is measured: ACC, ASR and RA on the profile's evaluation images, cached,
and the per-attack table that notebooks 05 and 06 (and every later table) build from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch import nn

from .. import metrics
from ..attacks import Attack, AttackConfig
from ..data import ImageData, seeded_subset
from ..defenses import OracleData
from ..session import Session
from ..tables import METRICS
from .keys import backdoor_fields, clean_fields, evaluation_key
from .trained import Defended, backdoored_model, clean_model


def evaluation_set(session: Session) -> ImageData:
    """The test images behind every reported ACC / ASR / RA: a seeded subset of ``profile.eval_size``
    images of the test split (the whole split when it is None, as in the paper profile)."""
    return seeded_subset(session.splits.test, session.profile.eval_size, session.seed, "eval-subset")


def test_accuracy(session: Session, model: nn.Module) -> tuple[float, torch.Tensor]:
    """Clean accuracy on :func:`evaluation_set` and the predictions behind it (aligned with its labels)."""
    test = evaluation_set(session)
    pred = metrics.predict(model, test.x, session.profile.eval_batch_size, session.device)
    return metrics.accuracy(pred, test.y), pred


def evaluate(session: Session, model: nn.Module, attack: Attack) -> dict[str, float]:
    """ACC on the clean test images; ASR and RA on the attack's backdoor test images (non-target ones).

    Both come from :func:`evaluation_set`. Also the clean accuracy on the target class alone, which
    clean-label attacks (SIG) lower.
    """
    acc, pred = test_accuracy(session, model)
    test, target = evaluation_set(session), attack.config.target
    x_bd, y_true = attack.backdoor_test(test)
    pred_bd = metrics.predict(model, x_bd, session.profile.eval_batch_size, session.device)
    on_target = test.y == target
    return {
        "acc": acc,
        "asr": metrics.attack_success_rate(pred_bd, target, num_classes=session.splits.spec.num_classes),
        "ra": metrics.robust_accuracy(pred_bd, y_true),
        "target_class_acc": metrics.accuracy(pred[on_target], test.y[on_target]),
    }


def evaluate_cached(session: Session, fields: dict[str, Any], model: nn.Module, attack: Attack) -> dict[str, float]:
    """:func:`evaluate` of the model whose cache key is ``fields``, itself cached (later notebooks reuse it)."""
    key = evaluation_key(session, fields, attack.name)
    return session.cache.get_or_compute("evaluation", key, lambda: evaluate(session, model, attack))


def backdoor_evaluation(session: Session, name: str, attack_config: AttackConfig | None = None) -> dict[str, float]:
    """:func:`evaluate` of attack ``name``'s backdoored model (``attack_config``: another than the default,
    :func:`.trained.backdoored_model`), cached (the 'before' of every defense)."""
    bd = backdoored_model(session, name, attack_config, progress=False)
    return evaluate_cached(session, backdoor_fields(session, name, bd.attack.config), bd.model, bd.attack)


def trigger_floor(session: Session, name: str, train_seed: int | None = None) -> dict[str, float]:
    """:func:`evaluate` of a *clean* model (no backdoor) on attack ``name``'s triggered test images; cached.

    Its ASR is the trigger's floor: the share of triggered images a model that never saw the trigger
    already sends to the target. No defense can be expected to push the ASR below it. ``train_seed``
    picks the second clean model of :func:`.trained.clean_model`.
    """
    clean = clean_model(session, progress=False, train_seed=train_seed)
    bd = backdoored_model(session, name, progress=False)
    trigger = backdoor_fields(session, name, bd.attack.config)
    return evaluate_cached(session, {**clean_fields(session, train_seed), "trigger": trigger}, clean.model, bd.attack)


def curve_eval(session: Session, attack: Attack, size: int, *, clean_to_target: bool = False):
    """An ``eval_fn`` for per-epoch curves and sweeps: ACC and ASR on seeded subsets of ``size`` images each.

    Subsets keep the curves cheap (two small forward passes per epoch); final numbers always come
    from :func:`evaluate` on :func:`evaluation_set`. ``clean_to_target`` adds the share of the subset's clean
    images of the other classes that the model sends to the target (read off the same pass): how far a model
    that answers the target to everything inflates its ASR.
    """
    test = session.splits.test
    x_bd, _ = attack.backdoor_test(test)
    g = torch.Generator().manual_seed(session.seed)
    pick_test = torch.randperm(len(test), generator=g)[:size]
    pick_bd = torch.randperm(len(x_bd), generator=g)[:size]
    x_test, y_test, x_bd = test.x[pick_test], test.y[pick_test], x_bd[pick_bd]
    batch, device, target = session.profile.eval_batch_size, session.device, attack.config.target

    def eval_fn(model: nn.Module) -> dict[str, float]:
        pred = metrics.predict(model, x_test, batch, device)
        scores = {
            "acc": metrics.accuracy(pred, y_test),
            "asr": metrics.attack_success_rate(metrics.predict(model, x_bd, batch, device), target),
        }
        if clean_to_target:
            scores["clean_to_target"] = float((pred[y_test != target] == target).float().mean())
        return scores

    return eval_fn


def oracle_data(session: Session, attack: Attack, size: int | None = None) -> OracleData:
    """The test data a labelled *oracle* choice reads (BackdoorBench's FP, ANP, RNP; notebook 08's oracle n): the
    images of :func:`evaluation_set`, so the oracle sees exactly what the reported ASR is measured on
    (``size``: only its first ``size`` images, a seeded random subset, for sweeps of many models)."""
    test = evaluation_set(session)
    if size is not None:
        if not (isinstance(size, int) and size > 0):
            raise ValueError(f"size must be None or an int > 0, got {size!r}")
        test = test.head(min(size, len(test)))
    x_bd, _ = attack.backdoor_test(test)
    return OracleData(test.x, test.y, x_bd, attack.config.target)


def evaluation_table(
    session: Session, runs: Mapping[str, Mapping[str, Defended]], before: str | None = None
) -> pd.DataFrame:
    """One row per method and attack: ACC, ASR, RA and DER (against the backdoored model), and the
    seconds the method took when it was computed (NaN where not recorded); fractions, not percent.

    ``runs`` maps a method's label to ``{attack name: Defended}`` (a ``Defended`` without cache key,
    such as a model built in a notebook cell, is evaluated without the cache). ``before`` (a label)
    adds the backdoored models themselves as a method, with DER 0.5 by definition. Columns:
    ``method``, ``attack`` (the attack's name), then :data:`METRICS` and ``seconds``.
    """
    attacks = list(dict.fromkeys(a for per_attack in runs.values() for a in per_attack))
    base = {a: backdoor_evaluation(session, a) for a in attacks}
    triggers = {a: backdoored_model(session, a, progress=False).attack for a in attacks}  # loaded once per attack
    rows = []
    if before is not None:
        rows += [table_row(before, a, base[a], base[a], float("nan")) for a in attacks]
    for method, per_attack in runs.items():
        for a, defended in per_attack.items():
            if defended.fields is None:
                ev = evaluate(session, defended.model, triggers[a])
            else:
                ev = evaluate_cached(session, defended.fields, defended.model, triggers[a])
            rows.append(table_row(method, a, base[a], ev, defended.info.get("compute_seconds", float("nan"))))
    return pd.DataFrame(rows, columns=["method", "attack", *METRICS, "seconds"])


def table_row(method: str, attack: str, base: dict[str, float], ev: dict[str, float], seconds: float) -> dict[str, Any]:
    """One row of :func:`evaluation_table`: ``method`` on ``attack`` measured as ``ev``, its DER against ``base``
    (the backdoored model's evaluation), and the seconds it took."""
    der = metrics.defense_effectiveness_rating(base["acc"], base["asr"], ev["acc"], ev["asr"])
    return {"method": method, "attack": attack, "ACC": ev["acc"], "ASR": ev["asr"], "RA": ev["ra"], "DER": der,
            "seconds": seconds}
