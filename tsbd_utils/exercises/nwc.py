"""Notebook 02: the neuron weight change (NWC) of every conv layer but the shortcuts, from two state dicts.

The student writes ``nwc(before, after)``: two ``state_dict`` s of the same PreActResNet18. It returns a dict
from each conv layer's name (the key without ``.weight``, shortcut projections left out) to a tensor of one value
per output channel (neuron): the L1 norm of that neuron's weight change, ``|w_after - w_before|`` summed over its
input channels and kernel.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..models import PreActResNet18
from ..observations import neuron_weight_change, nwc_layers
from ..rng import seeded
from .feedback import call, fail, keeps_rng, same_tensor, show, which_mistake


def models(seed: int, width: int = 4) -> tuple[nn.Module, nn.Module]:
    """A small PreActResNet18 and a copy whose every parameter (shortcuts, BN and head too) moved by seeded noise."""
    g = torch.Generator().manual_seed(seed)
    with seeded(seed, "exercise:nwc"):
        before = PreActResNet18(num_classes=10, in_channels=1, width=width)
    after = copy.deepcopy(before)
    with torch.no_grad():
        for p in after.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return before, after


def reference(before: nn.Module, after: nn.Module) -> dict[str, torch.Tensor]:
    """The suite's NWC (:func:`tsbd_utils.observations.neuron_weight_change`)."""
    return neuron_weight_change(before, after)


def _l2(before: nn.Module, after: nn.Module) -> dict[str, torch.Tensor]:
    b, a = dict(before.named_modules()), dict(after.named_modules())
    return {n: (a[n].weight - b[n].weight).detach().flatten(1).norm(dim=1) for n in nwc_layers(before)}


@keeps_rng
def check(nwc: Any, *, thorough: bool = False) -> None:
    """Compare ``nwc`` with the suite's NWC: the same layers, one L1 value per neuron each."""
    for seed in [0] + ([1, 2] if thorough else []):
        before, after = models(seed)
        text = "before=<state_dict of a width-4 PreActResNet18>, after=<the same model, every weight moved>"
        got = call(nwc, "nwc", text, before.state_dict(), after.state_dict())
        expected = reference(before, after)
        if not isinstance(got, dict):
            fail(f"nwc({text})", "a dict: layer name -> tensor of one value per neuron", show(got))
        names = list(expected)
        if set(got) != set(names):
            extra, missing = sorted(set(got) - set(names)), sorted(set(names) - set(got))
            hint = None
            if any("shortcut" in str(k) for k in extra):
                hint = "leave out the shortcut projections (their names contain 'shortcut'): TSBD ranks the other convs"
            elif any(str(k).endswith(".weight") for k in extra):
                hint = "name each layer as the module is named: the state_dict key without '.weight'"
            elif extra:
                hint = "only conv weights (4-dimensional tensors) have neurons to rank here"
            fail(f"nwc({text})", f"the {len(names)} layers {names[:3]} ... {names[-1]}",
                 f"extra keys {extra[:4]}, missing keys {missing[:4]}", hint)
        for name in names:
            if not same_tensor(got[name], expected[name]):
                hint = which_mistake(got[name], {
                    "that is the L2 norm: NWC sums the absolute changes (L1)": _l2(before, after)[name],
                    "that is the change of the whole layer per input channel: sum over dims 1, 2 and 3, one value per "
                    "output channel": (after.get_submodule(name).weight - before.get_submodule(name).weight)
                    .abs().sum((0, 2, 3)).detach(),
                    "that is a signed sum: take the absolute value of each change before summing":
                        (after.get_submodule(name).weight - before.get_submodule(name).weight).sum((1, 2, 3)).detach(),
                }, same_tensor)
                fail(f"nwc({text})[{name!r}]", show(expected[name]), show(got[name]), hint)
