"""TSBD: two-stage backdoor defense (Lin et al., NeurIPS 2024, https://arxiv.org/abs/2405.20291).

Stage 1, NWC-based zero reinitialization: unlearn the backdoored model on clean data (gradient
ascent until clean accuracy <= 10%), rank every neuron of every non-shortcut conv layer by its
weight change (NWC), take the top ``n`` share, and in the *original* model zero the top ``m``
share of those neurons' individual weight changes (official code: ``zero_reinit_weight``).

Stage 2, activeness-aware fine-tuning: fine-tune on the same clean images with
``g = (1 - alpha) * grad L(theta) + alpha * grad L(theta + r * g1 / ||g1||)`` (norm per parameter
tensor), the first-order estimate of a gradient-norm penalty (Zhao et al., ICML 2022): it keeps
the neurons from becoming "active" again, which would let the backdoor grow back.

The defender holds the backdoored model and 5% clean training data; no poisoned data.

Choice of n. The official code sweeps n in {0.01, ..., 0.9} and never picks one. The suite fixes
one n per profile (``Profile.tsbd_neuron_ratio``), the same for every attack, chosen with clean data only
(see :func:`.reinit.choose_neuron_ratio` and notebook 04, which also shows a sweep of n).

Example:
    >>> result = DEFENSES["tsbd"](model, splits.clean, TSBDConfig.for_profile(profile),
    ...                           spec=splits.spec, seed=0, device="cpu")
    >>> result.record["stage1"]["zeroed_weights"]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import field
from typing import Any

import torch
from torch import nn

from ..config import Profile, TrainConfig
from ..data import DatasetSpec, ImageData
from ..settings import above, at_least, check_ranges, in_range, non_negative, replace_checked, settings
from ..training import BatchTransform, History, epoch_steps, train
from ..unlearning import UnlearnConfig, Unlearned, clean_unlearn
from .activeness import ActivenessAwareStep
from .base import Budget, DefenseResult, DefenseSpec, register
from .common import capped_epochs
from .reinit import (
    REINIT_SCHEMES,
    reinitialize,
)


@settings
class TSBDConfig:
    """TSBD's settings; defaults are the official config (``config/defense/tsbd/config.yaml``)."""

    neuron_ratio: float = 0.25  # n: share of neurons (by NWC) to reinitialize; no official value (Profile)
    weight_ratio: float = 0.7  # m: share of those neurons' individual weight changes that is zeroed
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)  # stage 1's clean unlearning
    radius: float = 0.05  # r: size of the perturbation along the per-tensor normalised gradient
    alpha: float = 0.7  # weight of the perturbed gradient; 0 gives vanilla fine-tuning
    lr: float = 0.01  # stage 2 SGD learning rate; no weight decay, no scheduler
    momentum: float = 0.9  # stage 2 SGD momentum
    epochs: int = 21  # stage 2 passes over the clean images (official: range(20 + 1))
    batch_size: int = 256  # both stages

    def __post_init__(self) -> None:
        unit = in_range(0, 1)
        check_ranges(
            self, neuron_ratio=unit, weight_ratio=unit, radius=non_negative, alpha=unit, lr=non_negative,
            momentum=in_range(0, 1, high_open=True), epochs=at_least(0, int), batch_size=above(0, int),
        )

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> TSBDConfig:
        """The profile's TSBD: its n (``Profile.tsbd_neuron_ratio``), its clean unlearning
        (:meth:`UnlearnConfig.for_profile`), and its epoch cap (smoke only)."""
        base = cls(
            neuron_ratio=profile.tsbd_neuron_ratio,
            unlearn=UnlearnConfig.for_profile(profile, "clean"),
            epochs=capped_epochs(profile, cls.epochs),
        )
        return replace_checked(base, **overrides)

    def finetune_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=0.0,
            schedule="constant",
            augment=True,
            amp=False,  # float32 on CUDA too, as the official code runs it
        )


def activeness_aware_finetune(
    model: nn.Module,
    clean: ImageData,
    config: TSBDConfig = TSBDConfig(),
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    batch_transform: BatchTransform | None = None,
    progress: bool = False,
) -> History:
    """Stage 2 in place on ``model``: ``config.epochs`` epochs of :class:`ActivenessAwareStep`.

    ``config.alpha = 0`` is the vanilla fine-tuning of the paper's Table 4 (same loop, plain steps).
    ``eval_fn`` (for curves) is called after each epoch. ``batch_transform`` changes every clean
    batch after the usual crop and flip (a labelled variant, such as
    :class:`~tsbd_utils.shortcut.PhotometricLift`; the official method has none).
    """
    return train(
        model,
        clean,
        config.finetune_config(),
        spec=spec,
        seed=seed,
        device=device,
        step=ActivenessAwareStep(config.radius, config.alpha),
        eval_fn=eval_fn,
        batch_transform=batch_transform,
        progress=progress,
        desc="activeness-aware fine-tuning" if config.alpha > 0 else "vanilla fine-tuning",
    )


def defend(
    model: nn.Module,
    clean: ImageData,
    config: TSBDConfig | None = None,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    unlearned: Unlearned | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    batch_transform: BatchTransform | None = None,
    reinit: str = "zero",
    progress: bool = False,
) -> DefenseResult:
    """TSBD on ``model`` with the defender's ``clean`` images; ``model`` is left as it was.

    ``unlearned`` reuses a clean-unlearning run of the same model (notebooks cache it); otherwise
    stage 1 runs it here. ``batch_transform`` is passed to stage 2 only (see
    :func:`activeness_aware_finetune`): a labelled variant, not the official method. ``reinit`` names
    stage 1's scheme (:data:`~tsbd_utils.defenses.reinit.REINIT_SCHEMES`; ``"zero"`` is TSBD's, the others
    are the ablations of notebook 08).
    """
    config = config or TSBDConfig()
    REINIT_SCHEMES.check(reinit)  # a typo fails before the unlearning, not after it
    if unlearned is None:
        unlearned = clean_unlearn(
            model,
            clean,
            spec=spec,
            seed=seed,
            device=device,
            config=dataclasses.replace(config.unlearn, batch_size=config.batch_size),
        )
    repaired, stage1 = reinitialize(
        model, unlearned.model, config.neuron_ratio, config.weight_ratio, reinit, seed=seed
    )
    history = activeness_aware_finetune(
        repaired,
        clean,
        config,
        spec=spec,
        seed=seed,
        device=device,
        eval_fn=eval_fn,
        batch_transform=batch_transform,
        progress=progress,
    )
    record = {
        "unlearn_epochs": unlearned.epochs,
        "unlearn_reached": unlearned.reached,
        "unlearn_diverged": unlearned.diverged,  # stopped at its last finite epoch (see unlearning.unlearn)
        "stage1": stage1,
        "stage2": history.to_dict(),
        "config": dataclasses.asdict(config),
    }
    return DefenseResult(repaired.eval(), record)


def budget(config: TSBDConfig, images: int, record: dict[str, Any] | None = None) -> Budget:
    """TSBD's budget, from its run: the clean-unlearning epochs stage 1 needed, then the stage-2 epochs (two
    gradients per step when ``alpha > 0``: one at the weights, one at the perturbed weights)."""
    if record is None:
        raise ValueError("TSBD's budget depends on its run (clean unlearning stops early): pass the run's record")
    unlearning = record["unlearn_epochs"]
    steps = unlearning * epoch_steps(images, config.unlearn.batch_size) + config.epochs * epoch_steps(
        images, config.batch_size
    )
    kind = "activeness-aware, two gradients a step" if config.alpha > 0 else "plain steps"
    passes = f"{unlearning} unlearning + {config.epochs} fine-tuning epochs ({kind})"
    return Budget(passes, steps, (unlearning + config.epochs) * images, images)


register(
    DefenseSpec(
        name="tsbd",
        title="TSBD",
        paper=(
            'Lin, Liu, Wei, Li and Xiong, '
            '"Unveiling and Mitigating Backdoor Vulnerabilities based on Unlearning Weight Changes '
            'and Backdoor Activeness", NeurIPS 2024'
        ),
        url="https://arxiv.org/abs/2405.20291",
        config=TSBDConfig,
        defend=defend,
        holds="5% clean training data",
        options=("eval_fn",),
        paper_average=(91.7, 2.18, 97.09),
        budget=budget,
    )
)
