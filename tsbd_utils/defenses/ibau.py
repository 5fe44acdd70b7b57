"""i-BAU: Adversarial Unlearning of Backdoors via Implicit Hypergradient (Zeng, Chen, Park, Mao, Jin and
Jia, ICLR 2022, https://arxiv.org/abs/2110.03735).

Backdoor removal as a minimax problem: the inner player finds the universal additive perturbation
delta that most hurts the model on clean images (a stand-in for the unknown trigger), the outer
player updates the model so that it classifies the perturbed images correctly. The outer gradient
accounts for how the inner solution moves with the weights (implicit function theorem): with the
fixed-point map Phi(delta, theta) = delta - a * grad_delta L_inner(delta, theta), the hypergradient is

    dL_outer/dtheta = d_theta L_outer + (d_theta Phi)^T (I - d_delta Phi)^-T d_delta L_outer,

the inverse approximated by K terms of its Neumann series (fixed-point iteration), each a
Hessian-vector product by double backward (:func:`implicit_hypergradient`).

As BackdoorBench runs it (``defense/i-bau.py``, ``config/defense/i-bau/config.yaml``), per round:
  1. Fit delta (1, C, H, W) from zero with one pass of SGD (lr 10) over the shuffled, augmented clean
     images, minimising -CE(f(x + delta), f's own predictions) + 0.001 * ||delta||_2^2.
  2. For every batch of a fixed shuffled, augmented pass (drawn once before the first round): one
     Adam step (amsgrad, lr 1e-4, wd 0; the cosine scheduler BackdoorBench builds is never stepped)
     on CE(f(x'), y) where x' adds delta to int(portion * batch) random images (portion 0.01), with
     the hypergradient above: K = 5, a = 0.1, and L_inner = -CE(f(x0 + delta), y0) + 0.001 ||delta||^2
     always on the *first* batch of that pass (a quirk of the official code, kept).
  5 rounds, batch 256. The model stays in eval mode throughout (BackdoorBench calls ``model.eval()``
  once before the rounds): BatchNorm uses and keeps its running statistics, so the inner and outer
  losses are fixed functions of (delta, theta), as the implicit-function derivation assumes.

Perturbation space: delta lives in [0, 1] pixel units (the model normalises inside), as in the
original I-BAU code, which fed unnormalised images; BackdoorBench adds delta after its Normalize, so
its lr, regulariser and inner step act on delta / std instead. Neither code clamps x + delta to
[0, 1] (the clamp is commented out in both); the suite does not either, so delta is an unbounded
universal perturbation and the gradients are never cut by a saturated clamp.

Defender holds: the backdoored model and the 5% clean subset (no poisoned data, no test set).
Profiles: rounds = ``common.scaled_epochs(profile, 5)`` (paper 5, quick 1, smoke 1); K, the
perturbation fit and the batch pass are kept, since they define the algorithm, not its length.

Example:
    >>> result = DEFENSES["ibau"](model, splits.clean, IBAUConfig.for_profile(profile),
    ...                           spec=splits.spec, seed=0, device="cpu")
    >>> result.record["delta_l2"], result.record["loss"]
    >>> delta = universal_perturbation(model, splits.clean, spec=splits.spec, seed=0)  # (C, H, W)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..augment import augment
from ..config import Profile
from ..data import DatasetSpec, ImageData
from ..rng import generator
from ..settings import at_least, check_ranges, each, in_range, non_negative, positive, replace_checked, settings
from .base import Budget, DefenseResult, DefenseSpec, register
from .common import clean_accuracy, scaled_epochs, working_copy
from .hypergradient import implicit_hypergradient

Batch = tuple[torch.Tensor, torch.Tensor]


@settings
class IBAUConfig:
    """i-BAU settings; defaults are BackdoorBench's (``config/defense/i-bau/config.yaml`` and the code)."""

    n_rounds: int = 5  # rounds of (fit delta, one unlearning pass); profiles scale it with scaled_epochs
    fixed_point_steps: int = 5  # K: Neumann terms of the implicit hypergradient (fixed-point iterations)
    inner_lr: float = 0.1  # a: step of the fixed-point map Phi(delta) = delta - a * grad_delta L_inner
    perturb_lr: float = 10.0  # SGD lr of the per-round perturbation fit (one pass over the clean images)
    reg: float = 1e-3  # weight of ||delta||_2^2 in both the fit and L_inner
    portion: float = 0.01  # share of each outer batch that gets delta (int(portion * batch) images)
    outer_lr: float = 1e-4  # Adam (amsgrad) lr on the model; constant
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0  # BackdoorBench's wd for i-BAU
    batch_size: int = 256
    augment: bool = True  # BackdoorBench's i-BAU loader applies the training transforms (crop, flip)
    tol: float = 1e-10  # stop the fixed-point iteration once successive iterates differ by less

    def __post_init__(self) -> None:
        count = at_least(1, int)
        check_ranges(
            self, n_rounds=count, fixed_point_steps=count, inner_lr=positive, perturb_lr=positive, reg=non_negative,
            portion=in_range(0, 1), outer_lr=positive, adam_betas=each(in_range(0, 1, high_open=True), length=2),
            weight_decay=non_negative, batch_size=count, tol=non_negative,
        )  # augment: a bool, as its type asks

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> IBAUConfig:
        """The profile's i-BAU: ``n_rounds`` scaled by ``defense_scale`` (at least 1), the rest unchanged."""
        return replace_checked(cls(n_rounds=scaled_epochs(profile, cls.n_rounds)), **overrides)


def inner_loss(model: nn.Module, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, reg: float) -> torch.Tensor:
    """-CE(f(x + delta), y) + reg * ||delta||^2: what the perturbation minimises (no clamp, as the codes)."""
    return -F.cross_entropy(model(x + delta), y) + reg * delta.pow(2).sum()


def outer_loss(
    model: nn.Module, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, patched: torch.Tensor
) -> torch.Tensor:
    """CE(f(x + mask * delta), y) with ``patched`` (N,) a 0/1 mask of the images that get delta."""
    return F.cross_entropy(model(x + patched.view(-1, 1, 1, 1) * delta), y)


def clean_batches(
    clean: ImageData, config: IBAUConfig, *, spec: DatasetSpec, seed: int, purpose: str, device: torch.device
) -> list[Batch]:
    """One shuffled (and, like BackdoorBench's loader, augmented) pass: float [0, 1] batches on ``device``."""
    order = torch.randperm(len(clean), generator=generator(seed, f"{purpose}-order")).to(clean.x.device)
    x, y = clean.x[order].to(device).float().div_(255), clean.y[order].to(device)
    if config.augment:
        x = augment(x, spec.crop_pad, spec.flip, generator(seed, f"{purpose}-augment", device))
    return list(zip(x.split(config.batch_size), y.split(config.batch_size)))


def fit_perturbation(model: nn.Module, batches: Sequence[Batch], config: IBAUConfig) -> tuple[torch.Tensor, float]:
    """Step 1 of a round: delta (1, C, H, W) from zero, one SGD step per batch; and the mean CE it caused.

    The labels are the model's own predictions on the unperturbed batch (as in both codes), so the
    fit needs no labels and pushes every image away from whatever the model currently says.
    """
    delta = torch.zeros((1, *batches[0][0].shape[1:]), device=batches[0][0].device)
    ce_sum = torch.zeros((), device=delta.device)
    for x, _ in batches:
        with torch.no_grad():
            own = model(x).argmax(1)
        delta.requires_grad_(True)
        ce = F.cross_entropy(model(x + delta), own)
        (grad,) = torch.autograd.grad(-ce + config.reg * delta.pow(2).sum(), delta)
        delta = (delta - config.perturb_lr * grad).detach()
        ce_sum += ce.detach() * len(x)
    return delta, float(ce_sum) / sum(len(x) for x, _ in batches)


def unlearn_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    delta: torch.Tensor,
    batch: Batch,
    inner_batch: Batch,
    config: IBAUConfig,
    patch_gen: torch.Generator,
) -> tuple[torch.Tensor, int]:
    """Step 2 for one batch: an optimizer step along the implicit hypergradient. Returns (loss, iterations)."""
    x, y = batch
    params = [p for p in model.parameters() if p.requires_grad]
    patched = torch.zeros(len(x), device=x.device)
    patched[torch.randperm(len(x), generator=patch_gen)[: int(len(x) * config.portion)].to(x.device)] = 1.0
    loss_value: list[torch.Tensor] = []

    def outer(d: torch.Tensor) -> torch.Tensor:
        loss = outer_loss(model, d, x, y, patched)
        loss_value.append(loss.detach())
        return loss

    def phi(d: torch.Tensor) -> torch.Tensor:
        (grad,) = torch.autograd.grad(inner_loss(model, d, *inner_batch, config.reg), d, create_graph=True)
        return d - config.inner_lr * grad

    grads, iterations = implicit_hypergradient(outer, phi, delta, params, config.fixed_point_steps, config.tol)
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value[0], iterations


def universal_perturbation(
    model: nn.Module,
    clean: ImageData,
    config: IBAUConfig | None = None,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    round_index: int = 0,
) -> torch.Tensor:
    """The universal perturbation (C, H, W), on the CPU, that i-BAU's round ``round_index`` (0-based) fits on ``model``.

    Uses the same random streams as :func:`defend`, so on the backdoored model with ``round_index=0`` it is
    exactly the defense's first delta; on ``result.model`` it shows what is left to find afterwards.
    ``model`` is not modified.
    """
    config = config or IBAUConfig()
    net = working_copy(model, device)
    batches = clean_batches(
        clean, config, spec=spec, seed=seed, purpose=f"ibau-fit-{round_index}", device=torch.device(device)
    )
    return fit_perturbation(net, batches, config)[0][0].cpu()


def defend(
    model: nn.Module,
    clean: ImageData,
    config: IBAUConfig | None = None,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> DefenseResult:
    """i-BAU on ``model`` with the defender's ``clean`` images; ``model`` is left as it was.

    Record: ``rounds``; per round ``delta_l2`` (||delta||_2 in pixel units) and ``loss`` (mean outer
    CE over the unlearning pass); ``per_round`` rows adding delta's L-inf norm, the CE the fitted
    delta caused during its fit (``perturb_ce``), the mean fixed-point iterations and the clean-subset
    accuracy after the round; and ``config``.
    """
    config = config or IBAUConfig()
    if len(clean) == 0:
        raise ValueError("i-BAU needs clean images; got an empty set")
    device = torch.device(device)
    repaired = working_copy(model, device)  # eval mode for the whole defense, as BackdoorBench
    optimizer = torch.optim.Adam(
        [p for p in repaired.parameters() if p.requires_grad],
        lr=config.outer_lr,
        betas=config.adam_betas,
        weight_decay=config.weight_decay,
        amsgrad=True,
    )
    # One fixed pass for all rounds: BackdoorBench materialises its loader into a list once.
    outer_batches = clean_batches(clean, config, spec=spec, seed=seed, purpose="ibau-outer", device=device)
    patch_gen = generator(seed, "ibau-portion")
    rows: list[dict[str, Any]] = []
    for r in tqdm(range(config.n_rounds), desc="i-BAU rounds", disable=not progress):
        fit = clean_batches(clean, config, spec=spec, seed=seed, purpose=f"ibau-fit-{r}", device=device)
        delta, perturb_ce = fit_perturbation(repaired, fit, config)
        losses, iterations = [], []
        for batch in outer_batches:
            loss, its = unlearn_step(repaired, optimizer, delta, batch, outer_batches[0], config, patch_gen)
            losses.append(loss)
            iterations.append(its)
        rows.append(
            {
                "round": r + 1,
                "delta_l2": float(delta.norm()),
                "delta_linf": float(delta.abs().max()),
                "perturb_ce": perturb_ce,
                "loss": float(torch.stack(losses).mean()),
                "fixed_point_iterations": sum(iterations) / len(iterations),
                "clean_acc": clean_accuracy(repaired, clean, device),
            }
        )
    record = {
        "rounds": len(rows),
        "delta_l2": [row["delta_l2"] for row in rows],
        "loss": [row["loss"] for row in rows],
        "per_round": rows,
        "config": dataclasses.asdict(config),
    }
    return DefenseResult(repaired.eval(), record)


def budget(config: IBAUConfig, images: int, record: dict[str, Any] | None = None) -> Budget:
    """i-BAU's budget: per round, one pass fitting the perturbation and one pass updating the model (each of
    those steps solves the implicit hypergradient with ``fixed_point_steps`` extra products)."""
    per_pass = math.ceil(images / config.batch_size)
    rounds = f"{config.n_rounds} round" + ("s" if config.n_rounds != 1 else "")
    passes = f"{rounds} (perturbation pass + unlearning pass with implicit hypergradients)"
    return Budget(passes, 2 * config.n_rounds * per_pass, 2 * config.n_rounds * images, images)


register(
    DefenseSpec(
        name="ibau",
        title="i-BAU",
        paper=(
            'Zeng, Chen, Park, Mao, Jin and Jia, '
            '"Adversarial Unlearning of Backdoors via Implicit Hypergradient", ICLR 2022'
        ),
        url="https://arxiv.org/abs/2110.03735",
        config=IBAUConfig,
        defend=defend,
        holds="5% clean training data",
        options=(),
        paper_average=(87.86, 17.44, 88.11),
        budget=budget,
    )
)
