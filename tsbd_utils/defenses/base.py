"""What every defense is, what it receives, what it returns, and the registry that finds it by name.

A defense is a function ``defend(model, clean, config=None, *, spec, seed, device, progress, ...)``
that takes a backdoored model and the defender's clean images and returns a :class:`DefenseResult`.
It never modifies the model it is given. ``spec`` (the dataset: augmentation, classes) is part of
every call, since every defense that fine-tunes needs the dataset's augmentation.

Each module registers one :class:`DefenseSpec` in ``DEFENSES``: the function together with its
name, the title used in tables and plots, its paper, its config class and the optional inputs it
takes. A spec is called like the function (``DEFENSES["ft"](model, clean, config, spec=..., seed=0)``)
or run on a :class:`DefenseContext`, as attacks run on an ``AttackContext``:

>>> ctx = DefenseContext(clean=splits.clean, spec=splits.spec, seed=0)
>>> result = DEFENSES["ft"].run(model, ctx, DEFENSES["ft"].for_profile(profile))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from .. import metrics
from ..config import Profile, resolve
from ..registry import Registry

if TYPE_CHECKING:  # only for annotations
    from ..data import DatasetSpec, ImageData


@dataclass
class DefenseResult:
    """The repaired model and a JSON-able record of what the defense did (never wall time)."""

    model: nn.Module
    record: dict[str, Any] = field(default_factory=dict)


class Defense(Protocol):
    def __call__(self, model: nn.Module, clean: Any, config: Any = None, **kwargs: Any) -> DefenseResult: ...


class DefenseConfig(Protocol):
    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> DefenseConfig: ...


@dataclass(frozen=True)
class Budget:
    """What one run of a defense spends, for tables that compare defenses at their budgets.

    ``steps`` counts optimizer steps of every kind (network weights, masks, triggers, perturbations) and
    ``examples`` the images those steps were computed on, summed over the steps: the measure that stays
    comparable when a profile shrinks the batches as well as the epochs. ``passes`` says in words what the
    steps are, including steps that take more than one gradient (TSBD's stage 2, ANP, i-BAU).
    """

    passes: str  # in words: "10 fine-tuning epochs", "40 mask iterations"
    steps: int  # optimizer steps
    examples: int  # images behind those steps, summed over the steps
    images: int  # clean images the defense reads (0 for a data-free defense)


@dataclass(frozen=True)
class OracleData:
    """Test data for a labelled *oracle* choice (BackdoorBench's): never available to a defender.

    ``x_test``/``y_test``: the clean test set; ``x_bd``: the backdoor test images; ``target``: the
    attack's target label.
    """

    x_test: torch.Tensor
    y_test: torch.Tensor
    x_bd: torch.Tensor
    target: int

    def evaluate(self, model: nn.Module, device: str | torch.device, batch_size: int = 256) -> tuple[float, float]:
        acc = metrics.accuracy(metrics.predict(model, self.x_test, batch_size, device), self.y_test)
        asr = metrics.attack_success_rate(metrics.predict(model, self.x_bd, batch_size, device), self.target)
        return acc, asr


BudgetFn = Callable[[Any, int, Mapping[str, Any] | None], Budget]


@dataclass(frozen=True)
class DefenseContext:
    """What a defense may use besides the model and its config. The zoo builds it from a notebook
    session; tests build small ones. Optional inputs reach only the defenses that declare them
    (``DefenseSpec.options``)."""

    clean: ImageData | None  # the defender's clean images (None for a data-free defense such as CLP)
    spec: DatasetSpec | None  # image shape, classes, augmentation
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = False
    oracle: OracleData | None = None  # test set and trigger, for a labelled oracle choice (FP, ANP, RNP)
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None  # per-epoch curves (TSBD's stage 2)


COMMON_INPUTS = ("clean", "spec", "seed", "device", "progress")  # every defense takes these
CONTEXT_OPTIONS = tuple(f.name for f in fields(DefenseContext) if f.name not in COMMON_INPUTS)


@dataclass(frozen=True)
class DefenseSpec:
    """One defense: what it is called, where it comes from, how it is configured, and the function."""

    name: str  # registry key, lower case
    title: str  # short label for tables and plots, as the paper writes it
    paper: str  # citation: authors, title, venue and year
    url: str  # where to read the paper
    config: type[DefenseConfig]  # its config class; ``for_profile`` builds the profile's
    defend: Defense  # the function itself
    holds: str  # what the defender needs, in words (for tables of budgets and threat models)
    options: tuple[str, ...] = ()  # optional DefenseContext fields the function takes (``oracle``, ``eval_fn``)
    paper_average: tuple[float, float, float] | None = None  # TSBD paper's Table 1 averages: ACC, ASR, DER (%)
    # budget(config, clean_images, record) -> Budget: what one run spent. Defenses that stop early (NC's
    # reverse engineering, RNP's and TSBD's unlearning) read it from the run's record and need one.
    budget: BudgetFn | None = None

    def __post_init__(self) -> None:
        unknown = [o for o in self.options if o not in CONTEXT_OPTIONS]
        if unknown:
            raise ValueError(f"unknown defense option(s) {unknown}; allowed: {', '.join(CONTEXT_OPTIONS)}")

    def __call__(self, model: nn.Module, clean: Any, config: Any = None, **kwargs: Any) -> DefenseResult:
        return self.defend(model, clean, self.checked(config), **kwargs)

    def checked(self, config: Any) -> Any:
        """``config`` if it is this defense's (or None: the defaults); another defense's config is refused by name."""
        if config is not None and not isinstance(config, self.config):
            raise TypeError(
                f"{self.title} takes a {self.config.__name__} (or None for its defaults), got a {type(config).__name__}"
            )
        return config

    def for_profile(self, profile: Profile | str, **overrides: Any) -> Any:
        """This defense's config at ``profile``'s scale (a Profile or its name; paper: the published defaults)."""
        return self.config.for_profile(resolve(profile), **overrides)

    def run(self, model: nn.Module, context: DefenseContext, config: Any = None, **extra: Any) -> DefenseResult:
        """Run on ``context``: the common inputs, plus the optional ones this defense declares and
        the context holds; ``extra`` passes defense-specific arguments (TSBD's ``unlearned``)."""
        options = {o: getattr(context, o) for o in self.options if getattr(context, o) is not None}
        common = dict(spec=context.spec, seed=context.seed, device=context.device, progress=context.progress)
        return self.defend(model, context.clean, self.checked(config), **common, **options, **extra)


DEFENSES: Registry[DefenseSpec] = Registry("defense")


def register(spec: DefenseSpec) -> DefenseSpec:
    """Add ``spec`` to ``DEFENSES`` under its name (import order is table order)."""
    return DEFENSES.register(spec.name, spec)


class _ConfigView(Mapping[str, type]):
    """Each defense's config class by name, read from ``DEFENSES`` (never kept in step by hand)."""

    def __getitem__(self, name: str) -> type:
        return DEFENSES[name].config

    def __iter__(self) -> Iterator[str]:
        return iter(DEFENSES)

    def __len__(self) -> int:
        return len(DEFENSES)


DEFENSE_CONFIGS: Mapping[str, type] = _ConfigView()


def config_for(name: str, profile: Profile | str, **overrides: Any) -> Any:
    """Defense ``name``'s config at ``profile``'s scale (paper: the published defaults)."""
    return DEFENSES[name].for_profile(profile, **overrides)
