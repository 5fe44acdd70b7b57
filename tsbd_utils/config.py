"""Profiles: the scale of a run (smoke / quick / paper) as frozen dataclasses.

A profile sets how much data, how wide a model and how many epochs; the dataset is a separate
choice with a default per profile. Methods keep the paper's (or BackdoorBench's) defaults in their
own configs; a profile scales their epoch counts with :meth:`Profile.scale_epochs` and caps
open-ended loops with ``unlearn_cap``, by the documented factors below. The few settings a method
takes per profile (unlearning's lr, TSBD's n, ANP's iterations) are fields of the profile too, so
a notebook, the zoo and a direct call to a defense all get the same value.

Example:
    >>> from tsbd_utils.config import resolve
    >>> p = resolve("quick", train={"epochs": 3})
    >>> p.train.epochs, p.width
    (3, 16)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .names import DATASET_NAMES, MODEL_NAMES, check_name
from .registry import Registry
from .schedules import SCHEDULES
from .settings import above, at_least, check_ranges, in_range, optional, positive, settings

# The ranges of TrainConfig's settings; FineTuning, a recipe turned into a TrainConfig, checks its own by them.
TRAIN_RANGES = {"epochs": at_least(0, int), "batch_size": above(0, int), "lr": at_least(0),
                "momentum": in_range(0, 1, high_open=True), "weight_decay": at_least(0)}


@settings
class TrainConfig:
    """How a model is trained from scratch (clean model, backdoored models)."""

    epochs: int = 100  # passes over the training set (BackdoorBench: 100 on CIFAR-10)
    batch_size: int = 128  # images per SGD step (BackdoorBench: 128)
    lr: float = 0.01  # peak learning rate (BackdoorBench: 0.01)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum (BackdoorBench: off)
    weight_decay: float = 5e-4  # L2 penalty through SGD (BackdoorBench: 5e-4)
    schedule: str = "cosine"  # key of schedules.SCHEDULES: constant, cosine, onecycle
    augment: bool = True  # the dataset's random crop, plus flip where BackdoorBench flips (CIFAR-10)
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU, where bf16 is often slower
    channels_last: bool = True  # NHWC memory format on CPU and CUDA (benchmarks/train_throughput.py measures it)
    # torch.compile the model for the training loop (CUDA: benchmarks/train_throughput.py measures it; on 2 CPU cores
    # compiling costs minutes). A speed setting, not part of a model's cache key (compare=False), as threads are not.
    compile: bool = dataclasses.field(default=False, compare=False)

    def __post_init__(self) -> None:
        check_ranges(self, **TRAIN_RANGES)
        SCHEDULES.check(self.schedule)


@settings
class Profile:
    """The scale of a run. ``resolve`` builds one from a name plus overrides."""

    name: str  # smoke, quick or paper
    dataset: str  # default dataset (one of names.DATASET_NAMES); the DATASET parameter overrides it
    train_size: int | None  # training images kept, a seeded subset; None keeps the whole split
    test_size: int | None  # test images kept, a seeded subset; None keeps the whole split
    width: int  # PreActResNet18 base width: 64 is the paper's model, 16 about a quarter of it
    train: TrainConfig  # training from scratch (clean and backdoored models)
    model: str = "preactresnet18"  # one of names.MODEL_NAMES
    clean_ratio: float = 0.05  # defender's clean share of the training images (TSBD, BackdoorBench)
    epoch_scale: float = 1.0  # factor on the epoch counts of attack resources (LF, SSBA, Trojan, Input-aware)
    defense_scale: float = 1.0  # factor on the baseline defenses' epoch counts (FT, FP, NAD, NC, ANP, i-BAU, RNP)
    unlearn_cap: int = 1000  # most epochs of clean unlearning (the official code allows 1000)
    # Unlearning's learning rate (TSBD stage 1 and Observation 1; official: 1e-4). At 1e-3 clean unlearning on the
    # quick setting stops after ~13 epochs instead of ~75 (5x less time), and TSBD's result stays within 1.5
    # points (BadNets, n 0.2 / 0.3: ASR after TSBD 24.2 / 8.6, vs 24.8 / 7.1 at 1e-4).
    unlearn_lr: float = 1e-4
    # TSBD's neuron ratio n, one per profile for every attack, from the clean-data rule choose_neuron_ratio
    # (notebook 04 recomputes it). quick: the rule gave 0.25 over the eight quick models; paper: not yet measured
    # on the paper profile's models (a GPU), the quick value until then.
    tsbd_neuron_ratio: float = 0.25
    # ANP's mask iterations; None: BackdoorBench's 2000 scaled by defense_scale. An iteration is three forward and
    # two backward passes (~0.65 s at quick on 2 cores), so quick's scaled 200 would cost ~135 s per model; 40
    # (~30 s) gave the same picture on BadNets (ASR 100 -> 6.3% at 40, 4.9% at 200).
    anp_iterations: int | None = None
    epoch_cap: int | None = None  # most epochs of any defense's fine-tuning loop (smoke only); None: no cap
    # Test images behind every reported ACC / ASR / RA, a seeded subset of the test split (None: all of it).
    # Quick: 5,000 of 10,000, which halves the 64 evaluations of notebook 06 at a standard error of at most
    # 0.75 points (binomial, p = 0.5, 4,500 backdoor images); every notebook reports on the same subset.
    eval_size: int | None = None
    eval_batch_size: int = 256  # images per forward pass when evaluating (256 is fastest on 2 CPU cores; 1024 on a GPU)
    attack_overrides: bool = False  # apply BackdoorBench's per-attack recipe changes (WaNet's constant lr, ...)
    meaningful: bool = True  # False for smoke: its numbers only prove the code runs
    description: str = ""  # one line for tables and notebook headers

    def __post_init__(self) -> None:
        count, share = optional(above(0, int)), in_range(0, 1, low_open=True, high_open=True)
        check_ranges(
            self, train_size=count, test_size=count, eval_size=count, width=above(0, int), clean_ratio=share,
            epoch_scale=positive, defense_scale=positive, epoch_cap=count, unlearn_cap=above(0, int),
            unlearn_lr=positive, tsbd_neuron_ratio=share, anp_iterations=count,
        )
        check_name("dataset", self.dataset, DATASET_NAMES)
        check_name("model", self.model, MODEL_NAMES)

    def scale_epochs(self, epochs: int) -> int:
        """A method's epoch count at this profile's scale (at least 1)."""
        return max(1, round(epochs * self.epoch_scale))

    def summary(self) -> dict[str, Any]:
        """A flat, JSON-able view for tables and provenance."""
        flat = dataclasses.asdict(self)
        train = flat.pop("train")
        return {**flat, **{f"train.{k}": v for k, v in train.items()}}


PROFILES: Registry[Profile] = Registry("profile")

PROFILES.register(
    "smoke",
    Profile(
        name="smoke",
        dataset="fashion_mnist",
        train_size=2000,
        test_size=1000,
        width=4,
        train=TrainConfig(epochs=1, lr=0.05, nesterov=True, schedule="onecycle"),
        epoch_scale=0.02,  # 100 epochs -> 2: every code path, no meaning
        defense_scale=0.02,
        unlearn_cap=3,
        unlearn_lr=1e-3,
        epoch_cap=2,
        meaningful=False,
        description="tests: every code path in seconds; the numbers mean nothing",
    ),
)

PROFILES.register(
    "quick",
    Profile(
        name="quick",
        dataset="fashion_mnist",
        train_size=20000,
        test_size=None,
        width=16,
        # Calibrated on 2 CPU cores: about 90% clean accuracy in about 80 s per model.
        train=TrainConfig(epochs=5, lr=0.05, nesterov=True, schedule="onecycle"),
        epoch_scale=0.2,  # 100 fine-tuning epochs -> 20
        # Baselines: 100 epochs -> 10. Notebook 06 (8 defenses x 8 attacks) then needs 16 minutes of defense
        # compute on 2 cores; fewer epochs would leave FT, NAD and i-BAU nearly nothing to do.
        defense_scale=0.1,
        eval_size=5000,
        unlearn_cap=200,  # clean unlearning at lr 1e-4 needed 53-96 epochs in calibration
        unlearn_lr=1e-3,
        anp_iterations=40,
        description="make reproduce on a CPU: real results on Fashion-MNIST in under three hours on 2 cores",
    ),
)

PROFILES.register(
    "paper",
    Profile(
        name="paper",
        dataset="cifar10",
        train_size=None,
        test_size=None,
        width=64,
        train=TrainConfig(),  # BackdoorBench: 100 epochs, SGD 0.01, momentum 0.9, wd 5e-4, cosine, batch 128
        attack_overrides=True,
        eval_batch_size=1024,
        description="the paper's protocol: CIFAR-10, PreActResNet18, 100 epochs, on a GPU",
    ),
)


def resolve(profile: str | Profile, **overrides: Any) -> Profile:
    """The profile named ``profile`` with ``overrides`` applied.

    An override of ``None`` keeps the profile's value, so notebook parameters such as
    ``DATASET = None`` pass straight through. ``train`` takes a dict of TrainConfig fields
    (or a TrainConfig). Unknown profiles, fields and values fail at once, naming the choices.
    """
    base = profile if isinstance(profile, Profile) else PROFILES[profile]
    allowed = [f.name for f in dataclasses.fields(Profile) if f.name != "name"]
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in allowed:
            raise ValueError(f"unknown profile field {key!r}; allowed: {', '.join(allowed)}")
        if value is None:
            continue
        if key in ("train_size", "test_size", "eval_size") and value == "all":
            value = None  # the whole split (None itself means "keep the profile's value")
        if key == "train" and isinstance(value, dict):
            train_fields = [f.name for f in dataclasses.fields(TrainConfig)]
            for sub in value:
                if sub not in train_fields:
                    raise ValueError(f"unknown train field {sub!r}; allowed: {', '.join(train_fields)}")
            value = dataclasses.replace(base.train, **value)
        changes[key] = value
    return dataclasses.replace(base, **changes)


if __name__ == "__main__":  # python -m tsbd_utils.config show --profile quick
    import sys

    from .settings_report import main
    sys.exit(main())
