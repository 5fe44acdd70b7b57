"""Neural Cleanse, step 1: reverse-engineer, for each class, the smallest stamp that sends clean images there.

A stamp is a mask m (H x W, shared by the channels) and a pattern p (C x H x W), both ``tanh(.) /
(2 + eps) + 0.5`` of free parameters, applied as ``x' = (1 - m) x + m p``; Adam minimises
``CE(f(x'), k) + cost * |m|_1`` with BackdoorBench's dynamic cost and early stopping (:class:`_Schedule`).
Several labels are optimised in one forward pass: Adam is element-wise, so each follows the path
it would follow alone. The outlier test and the unlearning that use these stamps are in :mod:`.nc`; the settings of both
(:class:`NCConfig`) live here, beside the loop that reads most of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..augment import augment
from ..config import Profile
from ..data import DatasetSpec, ImageData
from ..rng import generator
from ..settings import (
    above,
    at_least,
    check_ranges,
    each,
    in_range,
    non_negative,
    optional,
    positive,
    replace_checked,
    settings,
)
from ..training import channels_last_safe
from .common import FineTuning, capped_epochs, working_copy

# Reverse engineering on a scaled profile (defense_scale < 1): per label, epochs of 40 images in
# Adam steps of 8. Steps, not images, decide whether a mask converges (Adam moves each tanh
# parameter by about lr per step), so the 80 epochs (and the schedule's patience and early stop,
# counted in epochs) stay and each epoch gets 5 small steps: 400 steps and 3,200 images per label,
# against 320 steps and 80,000 images with BackdoorBench's settings on the quick clean subset.
# Calibrated on the eight quick models and the clean one against BackdoorBench's settings (H200):
# the anomaly index of the target moved by 0.47 on average (16 x 32: 0.81; 32 x 64: 1.0).
SCALED_REVERSE = {"batch_size": 8, "epoch_images": 40}


@settings
class NCConfig:
    """Neural Cleanse's settings; defaults are BackdoorBench's CIFAR-10 config."""

    nc_epoch: int = 80  # most reverse-engineering epochs per class (early stopping may end sooner)
    batch_size: int = 256  # clean images per class in one Adam step
    epoch_images: int | None = None  # images per class and epoch, a seeded draw; None: all clean images
    mask_lr: float = 0.1  # Adam learning rate on the tanh parameters of mask and pattern
    betas: tuple[float, float] = (0.5, 0.9)  # Adam betas
    init_cost: float = 1e-3  # starting weight of the mask's L1 norm in the loss
    cost_multiplier: float = 2.0  # cost *= this after `patience` successful epochs, /= this**1.5 after failed ones
    patience: int = 5  # epochs of success (or failure) before the cost moves
    atk_succ_threshold: float = 0.98  # an epoch succeeds when this share of stamped images goes to the label
    early_stop: bool = True  # stop a label once its best norm stalls (after the cost went both up and down)
    early_stop_threshold: float = 0.99  # progress: the best norm falls below this share of the earlier best
    early_stop_patience: int = 25  # epochs without progress before stopping
    epsilon: float = 1e-7  # tanh(.) / (2 + epsilon) + 0.5 keeps mask and pattern inside (0, 1)
    augment: bool = True  # stamp augmented images (BackdoorBench reads its training loader), given a spec
    class_batch: int = 10  # labels optimised together in one forward pass (memory against speed)
    anomaly_threshold: float = 2.0  # flag labels whose anomaly index exceeds this
    unlearning_ratio: float = 0.2  # share of clean images stamped with a flagged trigger (true label kept)
    finetune: FineTuning = field(default_factory=FineTuning)  # the unlearning fine-tuning recipe

    def __post_init__(self) -> None:
        count, share = at_least(1, int), in_range(0, 1, low_open=True)
        check_ranges(
            self, nc_epoch=count, batch_size=count, epoch_images=optional(count), mask_lr=positive,
            betas=each(in_range(0, 1, high_open=True), length=2),
            init_cost=positive,  # (BackdoorBench's reset of a zero cost is then never needed)
            cost_multiplier=above(1), patience=count, atk_succ_threshold=share, early_stop_threshold=share,
            early_stop_patience=count, epsilon=positive, class_batch=count, anomaly_threshold=non_negative,
            unlearning_ratio=share,
        )

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> NCConfig:
        """The profile's NC: fine-tuning epochs scaled by ``defense_scale``; below scale 1 the
        reverse-engineering epochs shrink to :data:`SCALED_REVERSE`; smoke's ``epoch_cap`` caps nc_epoch."""
        reverse = SCALED_REVERSE if profile.defense_scale < 1 else {}
        nc_epoch = capped_epochs(profile, cls.nc_epoch)
        base = cls(nc_epoch=nc_epoch, finetune=FineTuning().scaled(profile), **reverse)
        return replace_checked(base, **overrides)


@dataclass(frozen=True)
class Trigger:
    """A reversed trigger in pixel space: mask (1, H, W), pattern (C, H, W), the mask's L1 norm."""

    mask: torch.Tensor
    pattern: torch.Tensor
    norm: float
    epochs: int | None = None  # reverse-engineering epochs run (None: given, not computed here)

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """``(1 - m) x + m p`` on float images in [0, 1]."""
        mask, pattern = self.mask.to(x.device), self.pattern.to(x.device)
        return (1 - mask) * x + mask * pattern


@dataclass
class _Schedule:
    """BackdoorBench's per-label bookkeeping at each epoch's end: best mask, dynamic cost, early stop."""

    config: NCConfig
    cost: float
    reg_best: float = math.inf  # the best (smallest) successful epoch's mean mask norm
    early_best: float = math.inf  # reg_best as early stopping last saw it
    up: int = 0  # successive successful epochs
    down: int = 0  # successive failed epochs
    stalled: int = 0  # epochs without progress
    went_up: bool = False
    went_down: bool = False
    epochs: int = 0
    best: tuple[torch.Tensor, torch.Tensor] | None = None

    def end_epoch(self, acc: float, reg: float, mask: torch.Tensor, pattern: torch.Tensor) -> bool:
        """Update with the epoch's mean success and mean mask norm; True stops this label."""
        c = self.config
        self.epochs += 1
        success = acc >= c.atk_succ_threshold
        if success and reg < self.reg_best:
            self.best, self.reg_best = (mask.clone(), pattern.clone()), reg
        if c.early_stop:
            if self.reg_best < math.inf:
                self.stalled = self.stalled + 1 if self.reg_best >= c.early_stop_threshold * self.early_best else 0
            self.early_best = min(self.early_best, self.reg_best)
            if self.went_up and self.went_down and self.stalled >= c.early_stop_patience:
                return True
        self.up, self.down = (self.up + 1, 0) if success else (0, self.down + 1)
        if self.up >= c.patience:
            self.up, self.cost, self.went_up = 0, self.cost * c.cost_multiplier, True
        elif self.down >= c.patience:
            self.down, self.cost, self.went_down = 0, self.cost / c.cost_multiplier**1.5, True
        if self.best is None:  # as BackdoorBench: a label that never succeeds keeps its first epoch's mask
            self.best = (mask.clone(), pattern.clone())
        return False


def _squash(param: torch.Tensor, epsilon: float) -> torch.Tensor:
    return torch.tanh(param) / (2 + epsilon) + 0.5


def _reverse_group(
    net: nn.Module,
    clean: ImageData,
    labels: Sequence[int],
    config: NCConfig,
    *,
    seed: int,
    device: torch.device,
    spec: DatasetSpec | None,
    progress: bool,
) -> list[Trigger]:
    """Reverse-engineer the triggers of ``labels`` together: one forward pass stamps every label's
    current trigger on the same clean batch. Each label's loss touches only its own mask and pattern,
    and Adam is element-wise, so each label follows the path it would follow alone."""
    x_all = clean.x.to(device)
    n, (c, h, w) = len(x_all), x_all.shape[1:]
    k = len(labels)
    # BackdoorBench starts both tanh parameters at 1 (mask and pattern about 0.88 everywhere).
    mask_param = torch.ones(k, 1, h, w, device=device, requires_grad=True)
    pattern_param = torch.ones(k, c, h, w, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([mask_param, pattern_param], lr=config.mask_lr, betas=config.betas)
    targets = torch.tensor(list(labels), device=device)
    schedules = [_Schedule(config, config.init_cost) for _ in labels]
    active = list(range(k))
    channels_last = channels_last_safe(net, device)
    order_gen = generator(seed, "nc-reverse-order")
    aug_gen = generator(seed, "nc-reverse-augment", device)
    per_epoch = n if config.epoch_images is None else min(n, config.epoch_images)
    for _ in tqdm(range(config.nc_epoch), desc=f"NC labels {list(labels)}", disable=not progress):
        idx = torch.tensor(active, device=device)
        costs = torch.tensor([schedules[i].cost for i in active], device=device)
        acc_sum = torch.zeros(len(active), device=device)
        reg_sum = torch.zeros(len(active), device=device)
        batches = torch.randperm(n, generator=order_gen)[:per_epoch].to(device).split(config.batch_size)
        for batch in batches:
            x = x_all[batch].float().div_(255)
            if config.augment and spec is not None:
                x = augment(x, spec.crop_pad, spec.flip, aug_gen)
            mask = _squash(mask_param[idx], config.epsilon)
            pattern = _squash(pattern_param[idx], config.epsilon)
            stamped = ((1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]).flatten(0, 1)
            if channels_last:
                stamped = stamped.contiguous(memory_format=torch.channels_last)
            logits = net(stamped).float().view(len(active), len(x), -1)
            goal = targets[idx, None].expand(-1, len(x))
            ce = F.cross_entropy(logits.flatten(0, 1), goal.flatten(), reduction="none").view_as(goal).mean(1)
            reg = mask.flatten(1).sum(1)  # the L1 norm: the mask is positive
            optimizer.zero_grad(set_to_none=True)
            (ce + costs * reg).sum().backward()
            optimizer.step()
            # Accumulated on the device: one synchronisation per epoch, not one per step.
            acc_sum += (logits.detach().argmax(2) == goal).float().mean(1)
            reg_sum += reg.detach()
        acc, reg = (acc_sum / len(batches)).tolist(), (reg_sum / len(batches)).tolist()
        with torch.no_grad():
            masks, patterns = _squash(mask_param, config.epsilon), _squash(pattern_param, config.epsilon)
        stopped = {i for j, i in enumerate(active) if schedules[i].end_epoch(acc[j], reg[j], masks[i], patterns[i])}
        active = [i for i in active if i not in stopped]
        if not active:
            break
    out = []
    for s in schedules:
        mask, pattern = (t.detach().cpu() for t in s.best)
        out.append(Trigger(mask, pattern, float(mask.sum()), s.epochs))
    return out


def reverse_engineer_all(
    model: nn.Module,
    clean: ImageData,
    config: NCConfig,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    spec: DatasetSpec | None = None,
    labels: Sequence[int] | None = None,
    progress: bool = False,
) -> list[Trigger]:
    """One :class:`Trigger` per label (default: every output class), ``config.class_batch`` labels
    per forward pass. ``spec`` enables BackdoorBench's augmentation (``config.augment``)."""
    device = torch.device(device)
    net = working_copy(model, device)
    for p in net.parameters():
        p.requires_grad_(False)  # gradients for the trigger only: no weight gradients computed
    if labels is None:
        with torch.no_grad():
            labels = range(net(clean.x[:1].to(device).float().div_(255)).shape[1])
    labels = list(labels)
    triggers: list[Trigger] = []
    for start in range(0, len(labels), config.class_batch):
        group = labels[start : start + config.class_batch]
        triggers += _reverse_group(net, clean, group, config, seed=seed, device=device, spec=spec, progress=progress)
    return triggers


def reverse_engineer(
    model: nn.Module,
    clean: ImageData,
    label: int,
    config: NCConfig,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    spec: DatasetSpec | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The reversed trigger of one ``label``: mask (1, H, W), pattern (C, H, W) in [0, 1], mask L1 norm."""
    (trigger,) = reverse_engineer_all(model, clean, config, seed=seed, device=device, spec=spec, labels=[label])
    return trigger.mask, trigger.pattern, trigger.norm
