"""The eight attacks of the paper's Table 1, one module each, in the registry ``ATTACKS``.

>>> from tsbd_utils.attacks import ATTACKS
>>> attack = ATTACKS["badnets"]()            # BackdoorBench's defaults
>>> attack = ATTACKS["blended"](alpha=0.1)   # a field of its config changed
"""

from __future__ import annotations

from ..registry import Registry
from .badnets import BadNets, BadNetsConfig
from .base import Attack, AttackConfig, AttackContext, check_images, to_uint8
from .blended import Blended, BlendedConfig
from .inputaware import InputAware, InputAwareConfig
from .lf import LF, LFConfig
from .sig import SIG, SIGConfig
from .ssba import SSBA, SSBAConfig
from .trojan import Trojan, TrojanConfig
from .wanet import WaNet, WaNetConfig

ATTACKS: Registry[type[Attack]] = Registry("attack")
for _cls in (BadNets, Blended, InputAware, LF, SIG, SSBA, Trojan, WaNet):  # the paper's Table 1 order
    ATTACKS.register(_cls.name, _cls)

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackConfig",
    "AttackContext",
    "check_images",
    "to_uint8",
    "BadNets",
    "BadNetsConfig",
    "Blended",
    "BlendedConfig",
    "InputAware",
    "InputAwareConfig",
    "LF",
    "LFConfig",
    "SIG",
    "SIGConfig",
    "SSBA",
    "SSBAConfig",
    "Trojan",
    "TrojanConfig",
    "WaNet",
    "WaNetConfig",
]
