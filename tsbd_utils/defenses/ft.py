"""FT: plain fine-tuning on the defender's clean data, the simplest baseline of the paper's Table 1.

Fine-tuning is the reference every backdoor-removal paper compares against (used as a defense in,
for example, Liu et al., *Fine-Pruning*, RAID 2018, https://arxiv.org/abs/1805.12185): keep
training the backdoored model on clean images and hope that catastrophic forgetting takes the
backdoor with it.

Defender holds: the backdoored model and 5% clean training data.
Defaults (BackdoorBench ``config/defense/ft/cifar10.yaml``): 100 epochs, SGD lr 0.01, momentum
0.9, weight decay 5e-4, cosine schedule, batch 256, training augmentation. Profiles scale the
epochs by ``Profile.defense_scale`` (quick: 10, smoke: 2).

Not the "vanilla fine-tuning" of notebook 05, which is TSBD's stage 2 loop with plain steps (no
weight decay, no schedule, 21 epochs) after stage 1.

Example:
    >>> result = DEFENSES["ft"](model, splits.clean, FTConfig.for_profile(profile),
    ...                         spec=splits.spec, seed=0, device="cpu")
    >>> result.record["epochs"]
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

import torch
from torch import nn

from ..config import Profile
from ..data import DatasetSpec, ImageData
from ..settings import check_types, replace_checked, settings
from .base import Budget, DefenseResult, DefenseSpec, register
from .common import FineTuning, fine_tune, working_copy


@settings
class FTConfig:
    """Fine-tuning settings (BackdoorBench's FT)."""

    finetune: FineTuning = field(default_factory=FineTuning)

    def __post_init__(self) -> None:
        check_types(self)

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> FTConfig:
        return replace_checked(cls(finetune=FineTuning().scaled(profile)), **overrides)


def defend(
    model: nn.Module,
    clean: ImageData,
    config: FTConfig | None = None,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> DefenseResult:
    """Fine-tune a copy of ``model`` on the clean images; ``model`` is left as it was."""
    config = config or FTConfig()
    repaired = working_copy(model, device)
    history = fine_tune(repaired, clean, config.finetune, spec=spec, seed=seed, device=device, progress=progress)
    record = {"epochs": config.finetune.epochs, "history": history.to_dict(), "config": dataclasses.asdict(config)}
    return DefenseResult(repaired.eval(), record)


def budget(config: FTConfig, images: int, record: dict[str, Any] | None = None) -> Budget:
    """FT's budget: its fine-tuning epochs over the clean images."""
    return config.finetune.budget(f"{config.finetune.epochs} fine-tuning epochs", images)


register(
    DefenseSpec(
        name="ft",
        title="FT",
        paper=(
            'Liu, Dolan-Gavitt and Garg, '
            '"Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks", '
            'RAID 2018 (fine-tuning as a baseline)'
        ),
        url="https://arxiv.org/abs/1805.12185",
        config=FTConfig,
        defend=defend,
        holds="5% clean training data",
        options=(),
        paper_average=(92.13, 34.75, 80.98),
        budget=budget,
    )
)
