"""Backdoor defenses, one module each, in the registry ``DEFENSES`` (TSBD first).

>>> from tsbd_utils.defenses import DEFENSES, TSBDConfig
>>> result = DEFENSES["tsbd"](model, splits.clean, TSBDConfig(), spec=splits.spec, seed=0)
"""

from __future__ import annotations

from .base import DEFENSES, Defense, DefenseResult
from .tsbd import ActivenessAwareStep, TSBDConfig, activeness_aware_finetune, zero_reinit

__all__ = [
    "DEFENSES",
    "Defense",
    "DefenseResult",
    "ActivenessAwareStep",
    "TSBDConfig",
    "activeness_aware_finetune",
    "zero_reinit",
]
