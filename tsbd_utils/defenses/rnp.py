"""RNP: Reconstructive Neuron Pruning (Li et al., "Reconstructive Neuron Pruning for Backdoor
Defense", ICML 2023, https://arxiv.org/abs/2305.14876).

Unlearning then recovering exposes backdoor neurons: gradient *ascent* on clean images wrecks a
copy of the model, and when BatchNorm channel masks are then learned to bring its clean accuracy
back, the masks of backdoor neurons stay low (recovery does not need them). Those neurons are
pruned in the original model.

1. Unlearn a copy on the clean images: SGD ascent (lr 0.01, momentum 0.9, weight decay 5e-4,
   lr x0.1 at epochs 10 and 20), at most 20 epochs, stopping after the first epoch whose
   training accuracy (on its augmented batches, before each step) is <= 20%.
2. On the unlearned copy, learn one mask per BN channel (init 1, clamped to [0, 1] after every
   step; only the BN weight is masked): 20 epochs of SGD (lr 0.2, momentum 0.9) on
   ``alpha * cross-entropy`` (BackdoorBench's alpha just scales the loss: 0.2 x lr 0.2 acts as
   lr 0.04), in train mode with augmentation.
3. Give BN weight 0 to every neuron of the *original* model whose mask is below a threshold,
   swept from 0 to 0.9 by 0.05 (:func:`pruning.prune_sweep`).

Defender holds: the backdoored model and clean training data. BackdoorBench gives RNP 1% of the
training set (``ratio 0.01``); here the defender's subset is 5%, so steps 1 and 2 use its
*first* ``clean_fraction = 0.2`` share (= 1% of the training set; ``ImageData.head``). The rest
is used only by the default threshold choice, which measures accuracy on the whole 5%.

Defaults: BackdoorBench ``defense/rnp.py`` (its argparse defaults; ``config/defense/rnp/config.yaml``
adds batch 256). Profiles do not scale RNP's epochs (only smoke's ``epoch_cap`` caps them): on
the quick profile the 1% share is 200 images, one batch, so 20 + 20 epochs are 40 small steps
and the 19-threshold sweep over the 5% costs as much; scaling them by ``defense_scale`` would
leave 2 recovery steps, too few for the masks to move.

Choice of the threshold: as in ANP (:mod:`.anp`): BackdoorBench's test-set choice (lowest test
ASR within a 10% accuracy drop) only as ``choice="oracle"`` with ``oracle=``; the default
``choice="clean"`` keeps the largest threshold within 10% of the clean-subset accuracy.

Deviations: pruning is strict (mask < threshold; BackdoorBench: <=), so threshold 0 is the
unpruned reference. BackdoorBench clips the gradient norm to 20 *before* the backward pass, on
already zeroed gradients, so it never clips anything: no clipping here.

Example:
    >>> result = DEFENSES["rnp"](model, splits.clean, RNPConfig.for_profile(profile),
    ...                         spec=splits.spec, seed=0, device="cpu")
    >>> result.record["unlearning"]["epochs"], result.record["threshold"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Profile, TrainConfig
from ..data import DatasetSpec, ImageData
from ..settings import at_least, check_ranges, each, in_range, non_negative, positive, replace_checked, settings
from ..training import Step, epoch_steps, train
from ..unlearning import AscentStep
from .base import Budget, DefenseResult, DefenseSpec, OracleData, register
from .common import capped_epochs, check_choice, working_copy
from .masks import attach_masks, clip_masks, freeze_all_but_masks, mask_values
from .pruning import PRUNING_RANGES, prune_sweep, pruning_record


@settings
class RNPConfig:
    """RNP's settings; defaults are BackdoorBench's (``defense/rnp.py`` argparse, batch 256 from its yaml)."""

    clean_fraction: float = 0.2  # share of the clean subset RNP learns on: its head, 1% of the training set
    unlearning_lr: float = 0.01  # SGD learning rate of the gradient ascent
    unlearning_momentum: float = 0.9
    unlearning_weight_decay: float = 5e-4
    unlearning_epochs: int = 20  # most epochs of ascent
    milestones: tuple[int, ...] = (10, 20)  # MultiStepLR: the ascent lr is multiplied by gamma at these epochs
    gamma: float = 0.1
    clean_threshold: float = 0.2  # stop unlearning after an epoch whose training accuracy is <= this
    recovering_lr: float = 0.2  # mask SGD learning rate
    recovering_momentum: float = 0.9  # mask SGD momentum, no weight decay
    recovering_epochs: int = 20  # mask-learning passes over the share
    alpha: float = 0.2  # factor on the recovery loss (BackdoorBench: loss = alpha * CE)
    batch_size: int = 256  # both stages
    pruning_max: float = 0.9  # largest threshold tried
    pruning_step: float = 0.05  # thresholds 0, 0.05, ..., 0.9 (19 candidates)
    acc_ratio: float = 0.1  # largest relative accuracy drop a threshold may cost
    choice: str = "clean"  # "clean" (defender's data) or "oracle" (BackdoorBench's test-set choice)
    oracle_rule: str = "lowest_asr"  # the oracle's rule: BackdoorBench keeps the lowest test ASR

    def __post_init__(self) -> None:
        share, momentum, epochs = in_range(0, 1, low_open=True), in_range(0, 1, high_open=True), at_least(1, int)
        check_ranges(
            self, clean_fraction=share, unlearning_lr=positive, unlearning_momentum=momentum,
            unlearning_weight_decay=non_negative, unlearning_epochs=epochs, milestones=each(epochs), gamma=share,
            clean_threshold=in_range(0, 1), recovering_lr=positive, recovering_momentum=momentum,
            recovering_epochs=epochs, alpha=positive, batch_size=at_least(2, int), **PRUNING_RANGES,
        )

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> RNPConfig:
        """BackdoorBench's RNP; only smoke's ``epoch_cap`` shortens it (see the module docstring)."""
        base = cls(
            unlearning_epochs=capped_epochs(profile, cls.unlearning_epochs),
            recovering_epochs=capped_epochs(profile, cls.recovering_epochs),
        )
        return replace_checked(base, **overrides)

    def share(self, clean: ImageData) -> ImageData:
        """The images RNP learns on: the first ``clean_fraction`` of the clean subset (at least 2)."""
        n = int(len(clean) * self.clean_fraction + 1e-9)  # 0.29 * 100 must give 29, not 28
        if n < 2:
            raise ValueError(f"clean_fraction {self.clean_fraction} of {len(clean)} clean images leaves {n} (< 2)")
        return clean.head(n)


class MultiStepAscent(AscentStep):
    """Gradient ascent with BackdoorBench's MultiStepLR: the lr shrinks by ``gamma`` at each milestone.

    The training loop sets the base lr before every batch; ``epoch`` (updated after each epoch by
    the stopping rule) says how many milestones have passed.
    """

    def __init__(self, milestones: tuple[int, ...], gamma: float) -> None:
        super().__init__()
        self.milestones, self.gamma, self.epoch = milestones, gamma, 0

    @property
    def factor(self) -> float:
        return self.gamma ** sum(self.epoch >= m for m in self.milestones)

    def __call__(self, model, x, y, optimizer):
        for group in optimizer.param_groups:
            group["lr"] *= self.factor
        return super().__call__(model, x, y, optimizer)


class MaskRecoveryStep(Step):
    """One mask step: minimise ``alpha * CE`` over the masks only, then clamp them to [0, 1]."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def __call__(self, model, x, y, optimizer):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        (self.alpha * loss).backward()
        optimizer.step()
        clip_masks(model)
        return loss.detach(), logits.detach()


def _epochs(history_epochs: list[dict[str, float]], keys: tuple[str, ...]) -> list[dict[str, float]]:
    return [{k: e[k] for k in keys} for e in history_epochs]


def unlearn_and_recover(
    model: nn.Module,
    clean: ImageData,
    config: RNPConfig,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """RNP's steps 1 and 2 on ``config.share(clean)``; returns the masks and a record of both stages."""
    share = config.share(clean)
    unlearned = working_copy(model, device)
    ascent = MultiStepAscent(config.milestones, config.gamma)
    factors: list[float] = []

    def stop(record: Mapping[str, float]) -> bool:
        factors.append(ascent.factor)
        ascent.epoch = int(record["epoch"])
        return record["train_acc"] <= config.clean_threshold

    unlearning = train(
        unlearned,
        share,
        TrainConfig(
            epochs=config.unlearning_epochs,
            batch_size=config.batch_size,
            lr=config.unlearning_lr,
            momentum=config.unlearning_momentum,
            weight_decay=config.unlearning_weight_decay,
            schedule="constant",  # the milestones are applied by the step
        ),
        spec=spec,
        seed=seed,
        device=device,
        step=ascent,
        stop=stop,
        progress=progress,
        desc="RNP unlearning",
    )
    attach_masks(unlearned)
    freeze_all_but_masks(unlearned)  # the optimizer below then moves the masks only
    recovery = train(
        unlearned,
        share,
        TrainConfig(
            epochs=config.recovering_epochs,
            batch_size=config.batch_size,
            lr=config.recovering_lr,
            momentum=config.recovering_momentum,
            weight_decay=0.0,
            schedule="constant",
        ),
        spec=spec,
        seed=seed + 1,  # batch order and augmentation of their own, not the unlearning's replayed
        device=device,
        step=MaskRecoveryStep(config.alpha),
        progress=progress,
        desc="RNP mask recovery",
    )
    unlearn_epochs = _epochs(unlearning.epochs, ("epoch", "loss", "train_acc"))
    for epoch, factor in zip(unlearn_epochs, factors):
        epoch["lr"] = config.unlearning_lr * factor
    record = {
        "clean_images": len(share),
        "unlearning": {
            "epochs": len(unlearning.epochs),
            "train_acc": unlearning.epochs[-1]["train_acc"],
            "reached": unlearning.stopped,
            "history": unlearn_epochs,
        },
        "recovery": {
            "epochs": len(recovery.epochs),
            "history": _epochs(recovery.epochs, ("epoch", "loss", "train_acc")),
        },
    }
    return mask_values(unlearned), record


def defend(
    model: nn.Module,
    clean: ImageData,
    config: RNPConfig | None = None,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    oracle: OracleData | None = None,
    progress: bool = False,
) -> DefenseResult:
    """RNP on a copy of ``model``; ``model`` is left as it was.

    Steps 1 and 2 see only the head of ``clean`` (``config.clean_fraction``); the default
    threshold choice measures accuracy on all of ``clean``. ``oracle`` (test set and trigger) is
    used only with ``config.choice="oracle"``: BackdoorBench's test-set choice, an *oracle* no
    defender has. Returns the pruned original model (plain BatchNorm2d layers, eval mode).
    """
    config = config or RNPConfig()
    check_choice(config.choice, oracle)  # before the training, not after it
    masks, stages = unlearn_and_recover(model, clean, config, spec=spec, seed=seed, device=device, progress=progress)
    pruned, threshold, rows = prune_sweep(model, masks, config, clean=clean, device=device, oracle=oracle)
    record = pruning_record(config, masks, threshold, rows, **stages)
    return DefenseResult(pruned, record)


def budget(config: RNPConfig, images: int, record: dict[str, Any] | None = None) -> Budget:
    """RNP's budget, from its run: the unlearning epochs it needed on its share of the clean images (at
    most ``config``'s), the mask-recovery epochs, then a threshold sweep of forward passes (on all the clean
    images)."""
    if record is None:
        raise ValueError("RNP's budget depends on its run (unlearning stops early): pass the run's record")
    share = record["clean_images"]
    unlearning = min(record["unlearning"]["epochs"], config.unlearning_epochs)
    epochs = unlearning + config.recovering_epochs
    passes = f"{unlearning} unlearning + {config.recovering_epochs} mask-recovery epochs on {share} images"
    passes += " + pruning sweep"
    return Budget(passes, epochs * epoch_steps(share, config.batch_size), epochs * share, images)


register(
    DefenseSpec(
        name="rnp",
        title="RNP",
        paper=(
            'Li, Lyu, Ma, Koren, Lyu, Li and Jiang, '
            '"Reconstructive Neuron Pruning for Backdoor Defense", ICML 2023'
        ),
        url="https://arxiv.org/abs/2305.14876",
        config=RNPConfig,
        defend=defend,
        holds="1% clean training data",
        options=("oracle",),
        paper_average=(88.99, 29.28, 82.83),
        budget=budget,
    )
)
