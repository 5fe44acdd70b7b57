"""The models and numbers every notebook shares, computed once and then read from the cache.

One module per job:

* :mod:`.keys`: the cache key of each model (what determines it);
* :mod:`.trained`: the clean, backdoored and unlearned models (notebooks 00-02 train them);
* :mod:`.defended`: TSBD and the baselines run on the backdoored models (notebooks 05, 06);
* :mod:`.evaluation`: ACC / ASR / RA on the evaluation images, and the per-attack table;
* :mod:`.triggers`: what NC and i-BAU find, beside the real trigger (notebook 06);
* :mod:`.table1`: the runs behind Table 1 and its labelled extras, and their budgets (notebook 07);
* :mod:`.ablations`: TSBD with one part changed at a time, NWC-FP and the two choices of n (notebook 08).

Example:
    >>> from tsbd_utils import session, zoo
    >>> S = session.start("06", profile="quick")
    >>> d = zoo.defended_model(S, "badnets", "ft")
    >>> zoo.by_attack(zoo.evaluation_table(S, {"FT": {"badnets": d}}, before="no defense"))
"""

from __future__ import annotations

from .defended import (
    CURVE_IMAGES,
    Defended,
    defended_model,
    defense_context,
    matched_config,
    tsbd_model,
    tsbd_runs,
)
from .evaluation import (
    METRICS,
    backdoor_evaluation,
    by_attack,
    curve_eval,
    evaluate,
    evaluate_cached,
    evaluation_set,
    evaluation_table,
    oracle_data,
    test_accuracy,
    trigger_floor,
)
from .table1 import (
    BASELINES,
    FLOOR,
    NO_DEFENSE,
    ORACLE_CHOICES,
    budget_summary,
    floor_rows,
    main_runs,
    matched_label,
    matched_runs,
    oracle_label,
    oracle_runs,
    unlearning_seconds,
)
from . import ablations
from .keys import backdoor_fields, clean_fields, defender_fields, evaluation_key, model_fields, unlearn_config
from .triggers import ibau_perturbation, nc_reversed_trigger, trigger_residual
from .trained import (
    Backdoored,
    Trained,
    attack_context,
    backdoored_model,
    clean_model,
    on_device,
    unlearned_model,
    unlearning_outcome,
)

__all__ = [
    "ablations",
    "BASELINES",
    "CURVE_IMAGES",
    "FLOOR",
    "NO_DEFENSE",
    "ORACLE_CHOICES",
    "budget_summary",
    "floor_rows",
    "main_runs",
    "matched_label",
    "matched_runs",
    "oracle_label",
    "oracle_runs",
    "unlearning_seconds",
    "Backdoored",
    "Defended",
    "METRICS",
    "Trained",
    "attack_context",
    "backdoor_evaluation",
    "backdoor_fields",
    "backdoored_model",
    "by_attack",
    "clean_fields",
    "defender_fields",
    "clean_model",
    "curve_eval",
    "defended_model",
    "defense_context",
    "evaluate",
    "evaluate_cached",
    "evaluation_key",
    "evaluation_set",
    "evaluation_table",
    "ibau_perturbation",
    "nc_reversed_trigger",
    "trigger_residual",
    "model_fields",
    "on_device",
    "oracle_data",
    "test_accuracy",
    "trigger_floor",
    "matched_config",
    "tsbd_model",
    "tsbd_runs",
    "unlearn_config",
    "unlearned_model",
    "unlearning_outcome",
]
