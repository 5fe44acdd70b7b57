"""What every defense returns, and the registry that finds defenses by name.

A defense is a function ``defend(model, clean, config=None, *, spec, seed, device, ...)`` that
takes a backdoored model and the defender's clean images and returns a :class:`DefenseResult`.
It never modifies the model it is given. ``spec`` (the dataset: augmentation, classes) is part of
every call, since every defense that fine-tunes needs the dataset's augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from ..config import Profile
from ..registry import Registry


@dataclass
class DefenseResult:
    """The repaired model and a JSON-able record of what the defense did (never wall time)."""

    model: nn.Module
    record: dict[str, Any] = field(default_factory=dict)


class Defense(Protocol):
    def __call__(self, model: nn.Module, clean: Any, config: Any = None, **kwargs: Any) -> DefenseResult: ...


DEFENSES: Registry[Defense] = Registry("defense")


class DefenseConfig(Protocol):
    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> DefenseConfig: ...


DEFENSE_CONFIGS: Registry[type[DefenseConfig]] = Registry("defense config")
"""Each defense's config class, under the defense's key: ``config_for`` builds the profile's."""


def config_for(name: str, profile: Profile, **overrides: Any) -> Any:
    """Defense ``name``'s config at ``profile``'s scale (paper: the published defaults)."""
    DEFENSES.check(name)
    return DEFENSE_CONFIGS[name].for_profile(profile, **overrides)
