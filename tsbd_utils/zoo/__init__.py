"""The models and numbers every notebook shares, computed once and then read from the cache.

One module per job:

* :mod:`.keys`: the cache key of each model (what determines it);
* :mod:`.trained`: the clean, backdoored and unlearned models (notebooks 00-02 train them);
* :mod:`.defended`: TSBD and the baselines run on the backdoored models (notebooks 05, 06);
* :mod:`.evaluation`: ACC / ASR / RA on the evaluation images, and the per-attack table;
* :mod:`.triggers`: what NC and i-BAU find, beside the real trigger (notebook 06);
* :mod:`.table1`: Table 1 and its labelled extras, assembled once for notebook 07 and the grid, and budgets;
* :mod:`.ablations`: TSBD with one part changed at a time, NWC-FP and the two choices of n (notebook 08).

Example:
    >>> from tsbd_utils import session, tables, zoo
    >>> S = session.start("06", profile="quick")
    >>> d = zoo.defended_model(S, "badnets", "ft")
    >>> tables.by_attack(zoo.evaluation_table(S, {"FT": {"badnets": d}}, before="no defense"))
"""

from __future__ import annotations

from . import ablations
from .defended import (
    CURVE_IMAGES,
    defended_model,
    matched_config,
    tsbd_model,
    tsbd_runs,
)
from .evaluation import (
    backdoor_evaluation,
    curve_eval,
    evaluate,
    evaluate_cached,
    evaluation_set,
    evaluation_table,
    test_accuracy,
    trigger_floor,
)
from .keys import backdoor_fields, clean_fields, unlearn_config
from .table1 import (
    BASELINES,
    FLOOR,
    LIFTS,
    MATCHED,
    NO_DEFENSE,
    ORACLES,
    VANILLA,
    Table1,
    assemble_table1,
    budget_summary,
    check_baselines,
    check_matched,
    check_oracles,
    floor_rows,
    main_runs,
    matched_label,
    matched_runs,
    oracle_label,
    oracle_runs,
    unlearning_seconds,
)
from .trained import (
    Backdoored,
    Defended,
    Trained,
    attack_context,
    backdoored_model,
    clean_model,
    unlearned_model,
)
from .triggers import ibau_perturbation, nc_reversed_trigger, trigger_residual

__all__ = [
    "ablations",
    "BASELINES",
    "CURVE_IMAGES",
    "FLOOR",
    "NO_DEFENSE",
    "LIFTS",
    "MATCHED",
    "ORACLES",
    "VANILLA",
    "Table1",
    "assemble_table1",
    "budget_summary",
    "check_baselines",
    "check_matched",
    "check_oracles",
    "floor_rows",
    "main_runs",
    "matched_label",
    "matched_runs",
    "oracle_label",
    "oracle_runs",
    "unlearning_seconds",
    "Backdoored",
    "Defended",
    "Trained",
    "attack_context",
    "backdoor_evaluation",
    "backdoor_fields",
    "backdoored_model",
    "clean_fields",
    "clean_model",
    "curve_eval",
    "defended_model",
    "evaluate",
    "evaluate_cached",
    "evaluation_set",
    "evaluation_table",
    "ibau_perturbation",
    "nc_reversed_trigger",
    "trigger_residual",
    "test_accuracy",
    "trigger_floor",
    "matched_config",
    "tsbd_model",
    "tsbd_runs",
    "unlearn_config",
    "unlearned_model",
]
