"""Notebook 05: one step of TSBD's activeness-aware fine-tuning.

The student writes ``aware_step(model, x, y, optimizer, radius, alpha)``, one update in place:

1. g1, the gradient of the cross-entropy at the current weights theta (this forward pass updates BatchNorm's
   running statistics, as any training step does);
2. e = radius * g1 / ||g1||, with the norm taken **per parameter tensor**;
3. g2, the gradient at theta + e, from a forward pass that leaves BatchNorm's running statistics untouched;
4. the weights restored to theta, the gradient set to (1 - alpha) g1 + alpha g2, and one ``optimizer.step()``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..defenses.activeness import ActivenessAwareStep
from ..models import PreActResNet18
from ..rng import seeded
from .feedback import call, fail, keeps_rng

CASES = {"example": [(0, 0.05, 0.7)], "thorough": [(1, 0.5, 0.5), (2, 0.2, 1.0)]}


def inputs(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small seeded PreActResNet18 (train mode) and one batch of 16 seeded 12x12 grayscale images."""
    with seeded(seed, "exercise:stage2"):
        model = PreActResNet18(num_classes=10, in_channels=1, width=4)
    g = torch.Generator().manual_seed(seed)
    return model.train(), torch.rand(16, 1, 12, 12, generator=g), torch.randint(0, 10, (16,), generator=g)


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: float, alpha: float) -> nn.Module:
    """``model`` after one step of the suite's :class:`~tsbd_utils.defenses.activeness.ActivenessAwareStep`."""
    ActivenessAwareStep(radius, alpha)(model, x, y, _optimizer(model))
    return model


def global_norm_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: float, alpha: float) -> nn.Module:
    """The usual mistake: one norm over all the parameters together (SAM's), instead of one per tensor."""
    optimizer = _optimizer(model)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    g1 = [p.grad.clone() for p in params]
    scale = radius / (torch.sqrt(sum((g * g).sum() for g in g1)) + 1e-12)
    kept = [p.detach().clone() for p in params]
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    with torch.no_grad():
        for p, g in zip(params, g1):
            p.add_(scale * g)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p, g, w in zip(params, g1, kept):
            p.copy_(w)
            p.grad.mul_(alpha).add_(g, alpha=1 - alpha)
    model.load_state_dict({**model.state_dict(), **stats})
    optimizer.step()
    return model


def _difference(a: nn.Module, b: nn.Module, kind: str) -> tuple[str, float] | None:
    """The first tensor (a parameter, or a BatchNorm buffer) where ``a`` and ``b`` differ, and by how much."""
    pairs = zip(a.named_parameters(), b.named_parameters()) if kind == "parameters" else zip(
        a.named_buffers(), b.named_buffers())
    for (name, u), (_, v) in pairs:
        if not torch.allclose(u.detach().double(), v.detach().double(), rtol=1e-4, atol=1e-6):
            return name, float((u.detach().double() - v.detach().double()).abs().max())
    return None


@keeps_rng
def check(aware_step: Any, *, thorough: bool = False) -> None:
    """Run ``aware_step`` and the suite's step from the same model, batch and optimizer settings (SGD, lr 0.1,
    momentum 0.9) and compare every parameter and every BatchNorm buffer afterwards."""
    for seed, radius, alpha in CASES["example"] + (CASES["thorough"] if thorough else []):
        model, x, y = inputs(seed)
        mine = copy.deepcopy(model)
        text = f"model=<width-4 PreActResNet18>, x=<16 images>, y=<16 labels>, optimizer=SGD(lr=0.1, momentum=0.9), " \
               f"radius={radius}, alpha={alpha}"
        call(aware_step, "aware_step", text, mine, x, y, _optimizer(mine), radius, alpha)
        expected = reference(copy.deepcopy(model), x, y, radius, alpha)
        if _difference(mine, model, "parameters") is None:
            fail(f"aware_step({text})", "the weights updated by one step", "the weights as they were",
                 "the step must change the model in place and end with optimizer.step()")
        buffers = _difference(mine, expected, "buffers")
        if buffers is not None:
            name, gap = buffers
            got = int(dict(mine.named_buffers())[name].flatten()[0]) if name.endswith("num_batches_tracked") else None
            hint = ("the perturbed forward pass updated BatchNorm's running statistics: switch their tracking off "
                    "for that pass (track_running_stats = False on every BatchNorm), or save and restore them")
            fail(f"aware_step({text})", f"BatchNorm buffer {name} as after one training step",
                 f"it differs by up to {gap:.3g}" + (f" ({got} batches tracked)" if got is not None else ""), hint)
        params = _difference(mine, expected, "parameters")
        if params is not None:
            name, gap = params
            if _difference(mine, global_norm_step(copy.deepcopy(model), x, y, radius, alpha), "parameters") is None:
                hint = "the perturbation uses one norm over all the parameters: normalise each parameter tensor by " \
                       "its own gradient norm"
            else:
                hint = "check that the weights are restored to theta before the step, and that the gradient is " \
                       "(1 - alpha) g1 + alpha g2"
            fail(f"aware_step({text})", f"parameter {name} as after the suite's step",
                 f"it differs by up to {gap:.3g}", hint)
