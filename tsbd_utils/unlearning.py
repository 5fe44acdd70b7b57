"""Gradient-ascent unlearning, as TSBD's official code runs it (``train_unlearning``).

Clean unlearning (TSBD's stage 1, Observation 1) pushes a model's loss *up* on the defender's
clean images until its accuracy falls to chance; poison unlearning (Observation 1's reference,
which needs the trigger) does it on backdoor test images with the target label until the ASR falls
under 5%. Either way the model is a copy; the weights it ends with are what NWC compares.

Example:
    >>> un = clean_unlearn(model, splits.clean, spec=splits.spec, seed=0, max_epochs=200)
    >>> un.epochs, un.reached
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .config import Profile, TrainConfig
from .data import DatasetSpec, ImageData
from .settings import above, check_ranges, in_range, positive, settings
from .training import History, Step, train

UNLEARN_MODES = ("clean", "poison")


@settings
class UnlearnConfig:
    """Gradient-ascent unlearning, as in the official ``train_unlearning`` (defaults: its config)."""

    lr: float = 1e-4  # SGD learning rate (official lr_un)
    momentum: float = 0.9  # SGD momentum; no weight decay, no scheduler
    batch_size: int = 256  # official batch size
    augment: bool = True  # clean unlearning sees the training augmentation (the official loader does)
    max_epochs: int = 1000  # official cap; profiles lower it (Profile.unlearn_cap)

    def __post_init__(self) -> None:
        check_ranges(self, lr=positive, momentum=in_range(0, 1, high_open=True), batch_size=above(0, int),
                     max_epochs=above(0, int))

    @classmethod
    def for_profile(cls, profile: Profile, mode: str = "clean") -> UnlearnConfig:
        """The profile's unlearning (``Profile.unlearn_lr``, ``unlearn_cap``) for ``mode`` ``"clean"`` (TSBD's
        stage 1, with the training augmentation) or ``"poison"`` (on backdoor *test* images: no augmentation)."""
        if mode not in UNLEARN_MODES:
            raise ValueError(f"unknown unlearning mode {mode!r}; allowed: {', '.join(UNLEARN_MODES)}")
        return cls(lr=profile.unlearn_lr, max_epochs=profile.unlearn_cap, augment=mode == "clean")

    def train_config(self, epochs: int | None = None) -> TrainConfig:
        return TrainConfig(
            epochs=epochs if epochs is not None else self.max_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=0.0,
            schedule="constant",
            augment=self.augment,
            amp=False,  # float32 on CUDA too, as the official code runs it
        )


class AscentStep(Step):
    """One gradient-ascent step: maximise the cross-entropy (the official ``(-loss).backward()``).

    ``record`` (optional) is a conv layer whose per-output-channel gradient L1 norm is appended
    to ``norms`` after every backward pass: the activeness of Observation 2.
    """

    def __init__(self, record: nn.Conv2d | None = None) -> None:
        self.record = record
        self.norms: list[torch.Tensor] = []

    def __call__(self, model, x, y, optimizer):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        (-loss).backward()
        if self.record is not None:
            # d(-L)/dw summed in absolute value over each output channel's in x kh x kw weights.
            self.norms.append(self.record.weight.grad.detach().abs().sum((1, 2, 3)).float().cpu())
        optimizer.step()
        return loss.detach(), logits.detach()


@dataclass
class Unlearned:
    """An unlearned copy of a model and how it got there."""

    model: nn.Module
    history: History  # per epoch: loss, train_acc and the monitored metric
    diverged: bool = False  # the ascent blew up (non-finite weights); ``model`` is the last finite epoch's

    @property
    def epochs(self) -> int:
        """Epochs behind ``model`` (a diverged run's last, non-finite epoch is not counted)."""
        return len(self.history.epochs)

    @property
    def reached(self) -> bool:
        """Whether the stopping rule fired (False: the epoch cap, or a divergence, ended the run first)."""
        return self.history.stopped


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def finite_state(model: nn.Module) -> bool:
    """Whether every floating-point weight and buffer of ``model`` (BatchNorm statistics included) is finite."""
    return not non_finite(model.state_dict())


def unlearn(
    model: nn.Module,
    data: ImageData,
    monitor,
    threshold: float,
    *,
    metric: str,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    config: UnlearnConfig = UnlearnConfig(),
    max_epochs: int | None = None,
    progress: bool = False,
    desc: str = "unlearn",
) -> Unlearned:
    """Gradient ascent on ``data`` until ``monitor(model) <= threshold`` (checked after each epoch).

    ``model`` is left untouched; a copy is unlearned in train mode, so BN running statistics drift
    as in the official code. Only the monitored metric is evaluated each epoch.

    Ascent has no floor: the loss can grow until the weights overflow. The official code then runs on
    with NaN weights, which predict one class for every image; when that class holds more than 10% of
    the clean images the rule never fires, the run goes on to the cap and its weight changes are NaN,
    which leaves stage 1 nothing to rank. Here the first epoch that ends with a non-finite weight or
    BatchNorm statistic stops the run, and the copy returns to the last epoch that ended finite
    (``Unlearned.diverged``; its record is dropped from the history).
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a fraction in [0, 1], got {threshold!r}")
    epochs = min(config.max_epochs, max_epochs) if max_epochs is not None else config.max_epochs
    copied = copy.deepcopy(model)
    last_finite = {k: v.detach().clone() for k, v in copied.state_dict().items()}
    diverged = False

    def evaluate(m: nn.Module) -> dict[str, float]:
        nonlocal diverged
        if not finite_state(m):
            diverged = True
            return {metric: float("nan")}
        # A state_dict copy per epoch: small beside an epoch of ascent, and the only way back after a blow-up.
        last_finite.update({k: v.detach().clone() for k, v in m.state_dict().items()})
        return {metric: monitor(m)}

    history = train(
        copied,
        data,
        config.train_config(epochs),
        spec=spec,
        seed=seed,
        device=device,
        step=AscentStep(),
        eval_fn=evaluate,
        stop=lambda record: diverged or record[metric] <= threshold,
        progress=progress,
        desc=desc,
    )
    if diverged:
        copied.load_state_dict(last_finite)
        history.epochs.pop()
        history.seconds.pop()
        history.stopped = False
    return Unlearned(copied, history, diverged)


def _options(spec, seed, device, config, max_epochs, progress) -> dict:
    return {
        "spec": spec,
        "seed": seed,
        "device": device,
        "config": config,
        "max_epochs": max_epochs,
        "progress": progress,
    }


def clean_unlearn(
    model: nn.Module,
    clean: ImageData,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    config: UnlearnConfig = UnlearnConfig(),
    max_epochs: int | None = None,
    threshold: float = 0.10,
    eval_batch_size: int = 256,
    progress: bool = False,
) -> Unlearned:
    """TSBD's clean unlearning: ascent on the defender's clean images until their accuracy is <= 10%.

    The accuracy is measured on the same clean images, without augmentation, in eval mode (the
    official "clean validation accuracy"); 10% is chance level for ten classes.
    """

    def clean_acc(m: nn.Module) -> float:
        return metrics.accuracy(metrics.predict(m, clean.x, eval_batch_size, device), clean.y)

    return unlearn(
        model,
        clean,
        clean_acc,
        threshold,
        metric="clean_acc",
        desc="clean unlearning",
        **_options(spec, seed, device, config, max_epochs, progress),
    )


def poison_unlearn(
    model: nn.Module,
    poisoned: torch.Tensor,
    target: int,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    config: UnlearnConfig = UnlearnConfig(augment=False),
    max_epochs: int | None = None,
    threshold: float = 0.05,
    eval_batch_size: int = 256,
    progress: bool = False,
) -> Unlearned:
    """Observation 1's second run: ascent on triggered images labelled ``target`` until ASR <= 5%.

    ``poisoned`` are uint8 backdoor test images (target-class images already left out). This needs
    the trigger, which no defender has: it exists only to check Observation 1. The images are the
    test split, seen without augmentation (the official code uses its backdoor test loader).
    """
    if poisoned.dtype != torch.uint8:
        raise ValueError(f"poisoned images must be uint8 (Attack.backdoor_test gives them), got {poisoned.dtype}")
    data = ImageData(poisoned, torch.full((len(poisoned),), target, dtype=torch.int64))

    def asr(m: nn.Module) -> float:
        return metrics.attack_success_rate(metrics.predict(m, poisoned, eval_batch_size, device), target)

    return unlearn(
        model,
        data,
        asr,
        threshold,
        metric="asr",
        desc="poison unlearning",
        **_options(spec, seed, device, config, max_epochs, progress),
    )
