"""Pieces the baseline defenses share: BackdoorBench's fine-tuning recipe, profile scaling, the
clean-data pruning rule and its labelled test-set oracle.

Profiles scale the baselines' epoch counts by ``Profile.defense_scale`` (and the smoke profile's
``epoch_cap``); the paper profile keeps BackdoorBench's defaults. Every defense works on a copy of the model it is
given (:func:`working_copy`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .. import metrics
from ..config import TRAIN_RANGES, Profile, TrainConfig
from ..data import DatasetSpec, ImageData
from ..settings import at_least, check_ranges, settings
from ..training import History, Step, epoch_steps, train
from .base import Budget, OracleData


def capped_epochs(profile: Profile, epochs: int) -> int:
    """``epochs`` capped by the profile's ``epoch_cap`` (smoke only; other profiles have none)."""
    return min(epochs, profile.epoch_cap) if profile.epoch_cap else epochs


def scaled_epochs(profile: Profile, epochs: int) -> int:
    """A baseline's ``epochs`` at the profile's ``defense_scale`` (at least 1), capped by ``epoch_cap``."""
    return capped_epochs(profile, max(1, round(epochs * profile.defense_scale)))


def working_copy(model: nn.Module, device: str | torch.device) -> nn.Module:
    """A deep copy on ``device`` in eval mode: defenses never touch the model they are given."""
    return copy.deepcopy(model).to(torch.device(device)).eval()


@settings
class FineTuning:
    """BackdoorBench's fine-tuning recipe (``config/defense/ft/cifar10.yaml``), used by FT, FP, NAD, NC."""

    epochs: int = 100  # passes over the clean subset
    lr: float = 0.01  # SGD learning rate, annealed by a cosine schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        check_ranges(self, **{**TRAIN_RANGES, "epochs": at_least(1, int)})  # TrainConfig's ranges, >= 1 epoch
        try:  # the training loop's own checks (its schedule), should it ever check more
            self.train_config()
        except ValueError as err:
            raise ValueError(f"fine-tuning {err}") from None

    def steps(self, images: int) -> int:
        """Optimizer steps of this recipe over ``images`` clean images."""
        return self.epochs * epoch_steps(images, self.batch_size)

    def budget(self, passes: str, images: int, before: tuple[int, int] = (0, 0)) -> Budget:
        """The :class:`~.base.Budget` of this recipe over ``images`` clean images, after ``before``
        (steps, examples) spent by an earlier stage."""
        return Budget(passes, before[0] + self.steps(images), before[1] + self.epochs * images, images)

    def scaled(self, profile: Profile) -> FineTuning:
        return dataclasses.replace(self, epochs=scaled_epochs(profile, self.epochs))

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            augment=True,
        )


def fine_tune(
    model: nn.Module,
    clean: ImageData,
    recipe: FineTuning,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device,
    step: Step | None = None,
    batch_transform=None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    progress: bool = False,
    desc: str = "fine-tuning",
) -> History:
    """Fine-tune ``model`` in place on the clean images with ``recipe`` (augmentation on)."""
    return train(
        model,
        clean,
        recipe.train_config(),
        spec=spec,
        seed=seed,
        device=device,
        step=step,
        batch_transform=batch_transform,
        eval_fn=eval_fn,
        progress=progress,
        desc=desc,
    )


def clean_accuracy(model: nn.Module, clean: ImageData, device: str | torch.device, batch_size: int = 256) -> float:
    """Accuracy on the defender's clean images (the only accuracy a defender can measure)."""
    return metrics.accuracy(metrics.predict(model, clean.x, batch_size, device), clean.y)


PRUNING_CHOICES = ("clean", "oracle")
ORACLE_RULES = ("lowest_asr", "largest")


def check_choice(choice: str, oracle: OracleData | None) -> None:
    """Fail at once on an unknown choice, or on ``"oracle"`` without its test data."""
    if choice not in PRUNING_CHOICES:
        raise ValueError(f"unknown pruning choice {choice!r}; allowed: {', '.join(PRUNING_CHOICES)}")
    if choice == "oracle" and oracle is None:
        raise ValueError("choice='oracle' needs oracle=OracleData(...) (the test set); the default is 'clean'")


def select_amount(
    rows: Sequence[dict[str, Any]], *, choice: str = "clean", acc_ratio: float = 0.1, oracle_rule: str = "lowest_asr"
) -> float:
    """The pruning amount a rule picks from ``rows`` (one per candidate, in increasing order of pruning).

    Each row holds ``amount`` and ``clean_acc`` (and, for the oracle, ``test_acc`` and ``test_asr``);
    the first row is the reference (normally amount 0, nothing pruned).

    * ``choice="clean"`` (the suite's rule, defender's data only): the last amount before the
      clean accuracy first falls more than ``acc_ratio`` (BackdoorBench's 10%, relative) below
      the reference's.
    * ``choice="oracle"`` (BackdoorBench's, needs the test set): among amounts whose *test*
      accuracy stays within that drop, the one with the lowest test ASR (``oracle_rule=
      "lowest_asr"``: ANP, RNP), or the last before the first that does not (``"largest"``: FP).
    """
    if choice not in PRUNING_CHOICES:
        raise ValueError(f"unknown pruning choice {choice!r}; allowed: {', '.join(PRUNING_CHOICES)}")
    if oracle_rule not in ORACLE_RULES:
        raise ValueError(f"unknown oracle rule {oracle_rule!r}; allowed: {', '.join(ORACLE_RULES)}")
    if not rows:
        raise ValueError("no pruning candidates given")
    key = "clean_acc" if choice == "clean" else "test_acc"
    floor = (1 - acc_ratio) * rows[0][key]
    if choice == "oracle" and oracle_rule == "lowest_asr":
        ok = [r for r in rows if r[key] >= floor]
        return min(ok, key=lambda r: (r["test_asr"], -r["amount"]))["amount"] if ok else rows[0]["amount"]
    chosen = rows[0]
    for row in rows[1:]:
        if row[key] < floor:
            break
        chosen = row
    return chosen["amount"]


def choose_amount(
    candidates: Sequence[float],
    apply: Callable[[float], nn.Module],
    *,
    clean: ImageData,
    device: str | torch.device,
    acc_ratio: float = 0.1,
    choice: str = "clean",
    oracle: OracleData | None = None,
    oracle_rule: str = "lowest_asr",
    identity: Callable[[float], Any] | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Try each pruning amount (``apply(amount)`` returns the pruned model) and pick one with
    :func:`select_amount`. Candidates run in increasing order of pruning, the first being the
    reference (normally 0). Returns the amount and one row per candidate tried: with the clean rule the
    sweep stops at the first amount that breaks it, since no later row can change the choice.

    ``identity(amount)``, read after ``apply(amount)``, says which model an amount gave (for a threshold
    sweep: how many neurons it pruned, the pruned sets being nested). An amount whose identity equals the
    previous one's gave the same model, so its row repeats those measurements instead of measuring the
    model again: on a test-set (oracle) sweep most of the cost.
    """
    check_choice(choice, oracle)
    if not candidates or list(candidates) != sorted(candidates):
        raise ValueError(f"pruning candidates must be a non-empty increasing sequence, got {list(candidates)!r}")
    rows: list[dict[str, Any]] = []
    previous: Any = object()  # equal to no identity
    for amount in candidates:
        pruned = apply(amount)
        current = identity(amount) if identity is not None else object()
        if rows and current == previous:
            row = {**rows[-1], "amount": float(amount)}  # the same model as the previous amount: the same numbers
        else:
            row = {"amount": float(amount), "clean_acc": clean_accuracy(pruned, clean, device)}
            if choice == "oracle":
                row["test_acc"], row["test_asr"] = oracle.evaluate(pruned, device)
        previous = current
        rows.append(row)
        if choice == "clean" and row["clean_acc"] < (1 - acc_ratio) * rows[0]["clean_acc"]:
            break
    return select_amount(rows, choice=choice, acc_ratio=acc_ratio, oracle_rule=oracle_rule), rows
