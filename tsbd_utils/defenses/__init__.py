"""Backdoor defenses, one module each, in the registry ``DEFENSES`` (TSBD first, then the baselines
of the paper's Table 1 in its order). Each entry is a :class:`DefenseSpec`: title, paper, config
class and the defend function, called directly or run on a :class:`DefenseContext`.

>>> from tsbd_utils.defenses import DEFENSES, DefenseContext
>>> DEFENSES["ibau"].title, DEFENSES["ibau"].url
('i-BAU', 'https://arxiv.org/abs/2110.03735')
>>> result = DEFENSES["tsbd"](model, splits.clean, DEFENSES["tsbd"].for_profile(profile), spec=splits.spec, seed=0)
"""

# Import order is registration order: TSBD first, then the baselines in Table 1 order.
from __future__ import annotations

from .base import DEFENSE_CONFIGS, DEFENSES, Budget, Defense, DefenseContext, DefenseResult, DefenseSpec, config_for
from .tsbd import REINIT_SCHEMES, ActivenessAwareStep, TSBDConfig, activeness_aware_finetune, reinitialize, zero_reinit
from .ft import FTConfig
from .fp import FPConfig
from .nad import NADConfig
from .nc import NCConfig
from .anp import ANPConfig
from .clp import CLPConfig
from .ibau import IBAUConfig
from .rnp import RNPConfig
from .common import FineTuning, OracleData

__all__ = [
    "Budget",
    "DEFENSES",
    "DEFENSE_CONFIGS",
    "config_for",
    "Defense",
    "DefenseContext",
    "DefenseResult",
    "DefenseSpec",
    "ActivenessAwareStep",
    "TSBDConfig",
    "activeness_aware_finetune",
    "REINIT_SCHEMES",
    "reinitialize",
    "zero_reinit",
    "FTConfig",
    "FPConfig",
    "NADConfig",
    "NCConfig",
    "CLPConfig",
    "IBAUConfig",
    "ANPConfig",
    "RNPConfig",
    "FineTuning",
    "OracleData",
]
