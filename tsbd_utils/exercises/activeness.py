"""Notebook 03: the activeness of one layer's neurons during one epoch of clean unlearning.

The student writes ``layer_activeness(model, batches, layer, lr)``: one epoch of gradient *ascent* on the
cross-entropy over ``batches`` (a list of (images, labels)), with SGD (``lr``, momentum 0.9), in train mode; after
each backward pass it records, for every output channel of the conv layer named ``layer``, the L1 norm of that
channel's weight gradient. It returns the mean over the batches: a tensor of one value per neuron.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import PreActResNet18
from ..rng import seeded
from ..unlearning import AscentStep
from .feedback import call, fail, keeps_rng, same_tensor, show, which_mistake

LAYER = "layer4.1.conv2"  # the layer the paper records
LR = 0.05  # far above unlearning's 1e-4, so that an epoch of descent and one of ascent visibly part ways


def inputs(seed: int, batches: int = 4, size: int = 16) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A small seeded PreActResNet18 and a few batches of seeded 12x12 grayscale images with labels."""
    with seeded(seed, "exercise:activeness"):
        model = PreActResNet18(num_classes=10, in_channels=1, width=4)
    g = torch.Generator().manual_seed(seed)
    data = [(torch.rand(size, 1, 12, 12, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(batches)]
    return model, data


def reference(model: nn.Module, batches, layer: str, lr: float) -> torch.Tensor:
    """One epoch of the suite's ascent step (:class:`tsbd_utils.unlearning.AscentStep`) recording ``layer``."""
    model.train()
    step = AscentStep(record=model.get_submodule(layer))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for x, y in batches:
        step(model, x, y, optimizer)
    return torch.stack(step.norms).mean(0)


def _variant(model: nn.Module, batches, layer: str, lr: float, *, sign: float, p: int, reduce: str) -> torch.Tensor:
    """A common mistake, for the hints: descent instead of ascent, an L2 norm, a sum over batches."""
    model.train()
    conv = model.get_submodule(layer)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    norms = []
    for x, y in batches:
        optimizer.zero_grad()
        (sign * F.cross_entropy(model(x), y)).backward()
        norms.append(conv.weight.grad.detach().flatten(1).norm(p=p, dim=1))
        optimizer.step()
    stacked = torch.stack(norms)
    return stacked.sum(0) if reduce == "sum" else stacked.mean(0)


@keeps_rng
def check(layer_activeness: Any, *, thorough: bool = False) -> None:
    """Compare ``layer_activeness`` with the suite's recording on a copy of the same model and batches."""
    for seed in [0] + ([1] if thorough else []):
        model, batches = inputs(seed)
        text = f"model=<width-4 PreActResNet18>, batches=<{len(batches)} batches of 16 images>, " \
               f"layer={LAYER!r}, lr={LR}"
        got = call(layer_activeness, "layer_activeness", text, copy.deepcopy(model), batches, LAYER, LR)
        expected = reference(copy.deepcopy(model), batches, LAYER, LR)
        if not same_tensor(got, expected, tol=1e-4):
            def variant(model=model, batches=batches, **kw):  # this seed's model and batches
                return _variant(copy.deepcopy(model), batches, LAYER, LR, **kw)
            hint = which_mistake(got, {
                "that is gradient descent: unlearning *maximises* the loss, backward on -loss":
                    variant(sign=1.0, p=1, reduce="mean"),
                "that is the L2 norm: activeness is the L1 norm of each channel's gradient": variant(
                    sign=-1.0, p=2, reduce="mean"),
                "that is the sum over batches: return the mean": variant(sign=-1.0, p=1, reduce="sum"),
            }, lambda a, b: same_tensor(a, b, tol=1e-4))
            fail(f"layer_activeness({text})", show(expected), show(got), hint)
