"""Backdoor defenses, one module each, in the registry ``DEFENSES`` (TSBD first, then the baselines
of the paper's Table 1 in its order). Each entry is a :class:`DefenseSpec`: title, paper, config
class and the defend function, called directly or run on a :class:`DefenseContext`.

>>> from tsbd_utils.defenses import DEFENSES, DefenseContext
>>> DEFENSES["ibau"].title, DEFENSES["ibau"].url
('i-BAU', 'https://arxiv.org/abs/2110.03735')
>>> result = DEFENSES["tsbd"](model, splits.clean, DEFENSES["tsbd"].for_profile(profile), spec=splits.spec, seed=0)
"""

from __future__ import annotations

from .activeness import ActivenessAwareStep
from .base import (
    DEFENSE_CONFIGS,
    DEFENSES,
    Budget,
    Defense,
    DefenseContext,
    DefenseResult,
    DefenseSpec,
    OracleData,
    config_for,
)
from .common import FineTuning
from .reinit import REINIT_SCHEMES, reinitialize, zero_reinit

# isort: off
# Registration order is import order: TSBD first, then the baselines in Table 1's order.
from . import tsbd, ft, fp, nad, nc, anp, clp, ibau, rnp  # noqa: F401 (imported to register)
# isort: on
from .anp import ANPConfig
from .clp import CLPConfig
from .fp import FPConfig
from .ft import FTConfig
from .ibau import IBAUConfig
from .nad import NADConfig
from .nc_reverse import NCConfig
from .rnp import RNPConfig
from .tsbd import TSBDConfig, activeness_aware_finetune

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
