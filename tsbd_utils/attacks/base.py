"""What every attack offers, and the helpers they share.

An attack is a class built from its frozen config. The life cycle:

1. ``prepare(context)`` builds what the attack needs for this dataset (a trigger image scaled to
   the images, a warp field, a generator, an optimized pattern); expensive resources go through the
   cache. ``load_state_dict`` restores the same state without recomputing it.
2. ``poison_train(data, seed)`` returns the poisoned training set and the poisoned indices for
   attacks that poison the data set; attacks that poison on the fly (WaNet, Input-aware) return the
   data unchanged and hand the training loop a ``batch_transform()`` instead.
3. ``apply(x)`` stamps the test-time trigger on float images in [0, 1]; ``backdoor_test(test)``
   builds the backdoor test set from the non-target test images, as BackdoorBench does.

Images are float (N, C, H, W) in [0, 1] on any device; no method modifies its input. Poisoned
images are stored as uint8, like BackdoorBench's PNG files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..cache import Cache
from ..config import Profile, TrainConfig
from ..data import ImageData
from ..datasets import DatasetSpec
from ..rng import generator
from ..settings import Rule, above, at_least, check_ranges, in_range, settings
from ..training import BatchTransform


@settings
class AttackConfig:
    """Threat-model fields shared by every attack (BackdoorBench: all-to-one, target 0, 10%)."""

    target: int = 0  # the class every triggered image is sent to (all-to-one)
    ratio: float = 0.1  # poisoning ratio: poisoned share of the whole training set (pratio)

    # The range of each numeric setting (settings.check_ranges' rules). A numeric setting not listed (here or in a
    # subclass's ``limits``) must be > 0; an int setting an int, never a bool.
    limits: ClassVar[dict[str, Rule]] = {
        "target": at_least(0, int),  # a class index
        "ratio": in_range(0, 1, low_open=True, high_open=True),
    }

    def __post_init__(self) -> None:
        limits = {k: v for cls in reversed(type(self).__mro__) for k, v in vars(cls).get("limits", {}).items()}
        numeric = {f.name: above(0, int if f.type == "int" else float)
                   for f in dataclasses.fields(self) if f.type in ("int", "float")}
        check_ranges(self, **{**numeric, **limits})


@dataclass
class AttackContext:
    """What ``prepare`` may use. The zoo builds it from a notebook session; tests build small ones."""

    spec: DatasetSpec  # image shape, classes, augmentation
    train: ImageData  # the attacker's clean training images (resources are fit on them)
    profile: Profile  # scales resource-building loops (epoch_scale)
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache: Cache | None = None  # where resources are kept; None recomputes them
    key: dict[str, Any] = field(default_factory=dict)  # fields naming the data and clean model, for cache keys
    clean_model: Callable[[], nn.Module] | None = None  # a trained clean model (Trojan, LF)

    def get_clean_model(self) -> nn.Module:
        if self.clean_model is None:
            raise ValueError("this attack needs a clean model: build the AttackContext with clean_model=...")
        return self.clean_model()

    def cached(self, kind: str, fields: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``compute()`` through the cache (when there is one), keyed by ``fields`` plus the context key."""
        if self.cache is None:
            return compute()
        return self.cache.get_or_compute(kind, {**self.key, **fields, "seed": self.seed}, compute)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to uint8, rounding (what saving a PNG does)."""
    return x.clamp(0, 1).mul(255).round_().to(torch.uint8)


def corner_mask(shape: tuple[int, int, int], side_at_32: int) -> torch.Tensor:
    """A (1, 1, H, W) mask of a square in the bottom-right corner, its side scaled from a 32-pixel image."""
    _, h, w = shape
    side = max(1, round(side_at_32 * h / 32))
    mask = torch.zeros(1, 1, h, w)
    mask[..., h - side :, w - side :] = 1.0
    return mask


def split_batch(size: int, ratio: float, cross_ratio: float) -> tuple[int, int]:
    """On-the-fly poisoning of a batch: how many images get the trigger, and how many the "cross" treatment."""
    n_bd = int(size * ratio)
    return n_bd, min(int(n_bd * cross_ratio), size - n_bd)


def check_images(x: torch.Tensor, shape: tuple[int, int, int] | None = None) -> None:
    """Fail at once, naming the problem, unless ``x`` is float (N, C, H, W) in [0, 1] of ``shape``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"images must be a float tensor (N, C, H, W) in [0, 1], got {got}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"images of shape {tuple(x.shape[1:])}; this attack was prepared for {tuple(shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"images hold {int((~torch.isfinite(x)).sum())} NaN or infinite values; allowed: [0, 1]")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"images must lie in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]")


class Attack:
    """Base class: the life cycle above, with defaults for a data-poisoning, dirty-label attack.

    Subclasses set the class attributes, implement ``_apply`` (and ``_prepare`` when they build
    anything) and keep every tensor they need in ``self.state`` so that ``state_dict`` captures it.
    """

    name: ClassVar[str]  # registry key
    title: ClassVar[str]  # display name
    citation: ClassVar[str]  # paper, venue, link
    config_class: ClassVar[type[AttackConfig]] = AttackConfig
    clean_label: ClassVar[bool] = False  # poisons only target-class images and keeps their labels
    on_the_fly: ClassVar[bool] = False  # poisons batches during training instead of the data set
    invisible: ClassVar[bool] = False  # the trigger is meant to be imperceptible (PSNR is checked)
    state_keys: ClassVar[tuple[str, ...]] = ()  # keys of self.state after prepare; "net." stands for net.*
    constant_lr: ClassVar[bool] = False  # BackdoorBench trains this attack's model with a constant learning rate
    uses_clean_model: ClassVar[bool] = False  # prepare() reads AttackContext.clean_model (the grid orders cells by it)
    profile_scaled: ClassVar[tuple[str, ...]] = ()  # config fields prepare() runs at the profile's epoch scale

    def __init__(self, config: AttackConfig | None = None, **overrides: Any) -> None:
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.name} takes a {self.config_class.__name__}, got {type(config).__name__}")
        allowed = [f.name for f in dataclasses.fields(config)]
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise ValueError(f"unknown {self.name} setting(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.shape: tuple[int, int, int] | None = None
        self.state: dict[str, torch.Tensor] = {}
        self.device = torch.device("cpu")  # where poisoning runs (set by prepare; generators are faster on a GPU)

    # ------------------------------------------------------------ life cycle
    def prepare(self, context: AttackContext) -> Attack:
        """Build the attack's state for ``context``'s images; returns self."""
        self.shape = (context.spec.channels, context.spec.size, context.spec.size)
        self.device = context.device
        if not 0 <= self.config.target < context.spec.num_classes:
            raise ValueError(
                f"target {self.config.target} is not a class of {context.spec.name} (0..{context.spec.num_classes - 1})"
            )
        self._prepare(context)
        return self

    def _prepare(self, context: AttackContext) -> None:
        """Subclasses build their state here."""

    def scaled_settings(self, profile: Profile) -> dict[str, int]:
        """The config fields (:attr:`profile_scaled`) that prepare() runs at ``profile``'s scale, with the values it
        runs them at (:meth:`~tsbd_utils.config.Profile.scale_epochs`)."""
        return {name: profile.scale_epochs(getattr(self.config, name)) for name in self.profile_scaled}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor the attack needs after ``prepare`` (stored with the backdoored model)."""
        shape = torch.tensor(self.shape if self.shape else (0, 0, 0))
        return {"shape": shape, **{k: v.detach().cpu() for k, v in self.state.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> Attack:
        """Restore what ``prepare`` built, without rebuilding it; a state lacking this attack's tensors (another
        attack's, or none) is refused by name."""
        held = set(state)

        def present(key: str) -> bool:  # "net." asks for at least one of net's tensors
            return key in held or (key.endswith(".") and any(h.startswith(key) for h in held))

        missing = [k for k in ("shape", *self.state_keys) if not present(k)]
        if missing:
            raise ValueError(
                f"{self.title} state lacks {', '.join(k + '*' if k.endswith('.') else k for k in missing)}; it holds "
                f"{', '.join(sorted(held)[:6]) or 'nothing'} (is it another attack's state?)"
            )
        self.shape = tuple(int(s) for s in state["shape"])
        self.state = {k: v for k, v in state.items() if k != "shape"}
        self._loaded()
        return self

    def _loaded(self) -> None:
        """Subclasses rebuild modules from ``self.state`` here (generators, encoders)."""

    def _require_prepared(self) -> None:
        if self.shape is None:
            raise RuntimeError(f"{self.name}: call prepare(context) or load_state_dict(state) first")

    # ------------------------------------------------------------ triggering
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The test-time trigger on float images (N, C, H, W) in [0, 1]; a new tensor, same device."""
        self._require_prepared()
        check_images(x, self.shape)
        with torch.no_grad():
            return self._apply(x).clamp(0, 1)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_uint8(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """``apply`` on uint8 images in batches on ``self.device``, back to uint8 (how poisoned sets are stored)."""
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"apply_uint8 takes uint8 images (N, C, H, W) in 0..255, got {got}; use apply for floats")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        out = torch.empty_like(x)
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(self.device).float() / 255
            out[start : start + batch_size] = to_uint8(self.apply(batch)).to(out.device)
        return out

    # ------------------------------------------------------------ poisoning
    def poison_count(self, labels: torch.Tensor) -> int:
        """How many training images are poisoned: ``ratio`` of the whole set (BackdoorBench's pratio).

        For a clean-label attack the candidates are the target-class images only, so the count is
        capped by their number (at 10% on a balanced 10-class set: every target-class image).
        """
        count = round(self.config.ratio * len(labels))
        if self.clean_label:
            count = min(count, int((labels == self.config.target).sum()))
        return count

    def poison_index(self, labels: torch.Tensor, seed: int) -> torch.Tensor:
        """A seeded choice of the images to poison, sorted."""
        candidates = torch.arange(len(labels))
        if self.clean_label:
            candidates = candidates[labels.cpu() == self.config.target]
        order = torch.randperm(len(candidates), generator=generator(seed, f"poison:{self.name}"))
        return candidates[order[: self.poison_count(labels)]].sort().values

    def poison_train(self, data: ImageData, seed: int) -> tuple[ImageData, torch.Tensor]:
        """The poisoned training set and the indices of the poisoned images; ``data`` is untouched."""
        self._require_prepared()
        if self.on_the_fly:
            return data, torch.empty(0, dtype=torch.int64)
        index = self.poison_index(data.y, seed)
        x, y = data.x.clone(), data.y.clone()
        x[index] = self.apply_uint8(data.x[index])
        if not self.clean_label:
            y[index] = self.config.target
        return ImageData(x, y), index

    def train_config(self, profile: Profile) -> TrainConfig:
        """The recipe the backdoored model is trained with: the profile's, unless the attack overrides it.

        BackdoorBench changes the recipe for some attacks (WaNet, Input-aware: lr milestones past the
        last epoch, so a constant lr); those overrides apply where the profile asks for them
        (``attack_overrides``: the paper profile).
        """
        if self.constant_lr and profile.attack_overrides:
            return dataclasses.replace(profile.train, schedule="constant")
        return profile.train

    def batch_transform(self) -> BatchTransform | None:
        """The training loop's hook for on-the-fly poisoning (None for data-poisoning attacks)."""
        return None

    def backdoor_test(self, test: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
        """Triggered non-target test images (uint8) and their true labels."""
        keep = test.y != self.config.target
        return self.apply_uint8(test.x[keep]), test.y[keep]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
