"""TSBD's stage 1: rank neurons by their weight change under clean unlearning (NWC), zero the largest changes
of the top ones in the original model, and the suite's clean-data rule for how many (n).

Official code: ``zero_reinit_weight``. Notebook 04 walks through it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..observations import flatten_layers, nwc_layers, weight_changes


def top_neurons(nwc: dict[str, torch.Tensor], neuron_ratio: float) -> dict[str, list[int]]:
    """The global top ``int(neuron_ratio * N)`` of all layers' neurons together, largest NWC first (ties: in
    layer order), as each layer's list of neuron indices. ``nwc`` maps a layer to its NWC per neuron."""
    if not 0 <= neuron_ratio <= 1:
        raise ValueError(f"neuron_ratio {neuron_ratio!r} must be in [0, 1]")
    values, owner = flatten_layers(nwc)
    top = values.argsort(descending=True, stable=True)[: int(neuron_ratio * len(values))].tolist()
    chosen: dict[str, list[int]] = {name: [] for name in nwc}
    for index in top:
        name, k = owner[index]
        chosen[name].append(k)
    return chosen


def zero_reinit(
    model: nn.Module,
    unlearned: nn.Module,
    neuron_ratio: float,
    weight_ratio: float = 0.7,
    layers: list[str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` with the top weight changes of the top-NWC neurons set to zero.

    1. NWC per neuron (output channel) of each layer from ``model`` to ``unlearned``; all layers
       ranked together; the top ``int(neuron_ratio * neurons)`` kept.
    2. Their individual changes |dw| pooled; the threshold is the smallest of the top
       ``int(weight_ratio * len)``; every weight of those neurons with |dw| >= threshold is zeroed.

    Returns the copy and a record: neurons and zeroed weights per layer, the threshold.
    """
    if not (0 <= neuron_ratio <= 1 and 0 <= weight_ratio <= 1):
        raise ValueError(f"neuron_ratio {neuron_ratio!r} and weight_ratio {weight_ratio!r} must be in [0, 1]")
    layers = layers if layers is not None else nwc_layers(model)
    changes = weight_changes(model, unlearned, layers)
    chosen = top_neurons({name: changes[name].sum(1) for name in layers}, neuron_ratio)
    n_top = sum(len(rows) for rows in chosen.values())
    total = sum(len(changes[name]) for name in layers)
    pooled = torch.cat([changes[name][chosen[name]].flatten() for name in layers]) if n_top else torch.empty(0)
    n_weights = int(weight_ratio * len(pooled))
    reinit = copy.deepcopy(model)
    modules = dict(reinit.named_modules())
    record: dict[str, Any] = {"neurons": n_top, "total_neurons": total, "threshold": None, "layers": {}}
    if n_weights == 0:
        record["zeroed_weights"] = 0
        return reinit, record
    threshold = pooled.topk(n_weights).values.min()
    zeroed = 0
    with torch.no_grad():
        for name in layers:
            rows = chosen[name]
            if not rows:
                continue
            weight = modules[name].weight
            mask = torch.zeros_like(changes[name], dtype=torch.bool)
            mask[rows] = changes[name][rows] >= threshold
            weight.masked_fill_(mask.view_as(weight).to(weight.device), 0.0)
            record["layers"][name] = {"neurons": len(rows), "zeroed_weights": int(mask.sum())}
            zeroed += int(mask.sum())
    record.update(threshold=float(threshold), zeroed_weights=zeroed)
    return reinit, record


OFFICIAL_SWEEP = (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 0.9)  # n values the official code runs
DISRUPTION = 2 / 3  # the rule below: stage 1 must cost at least a third of the clean accuracy


def choose_neuron_ratio(clean_acc: dict[float, float], before: float, disruption: float = DISRUPTION) -> float:
    """The suite's rule for n, from clean data only: the smallest n whose stage 1 is disruptive enough.

    ``clean_acc`` maps candidate n (the official sweep) to the accuracy on the defender's clean
    images right after stage 1 (averaged over the models the rule is set for); ``before`` is that
    accuracy before stage 1. The rule returns the smallest n with ``clean_acc[n] <= disruption *
    before``: stage 1 has to remove enough of the network that the model visibly breaks (a third
    of its clean accuracy), and stage 2 is there to earn it back. No backdoor data, no test set.
    Falls back to the largest candidate when none qualifies.
    """
    if not clean_acc:
        raise ValueError("no candidate neuron ratios given")
    for n in sorted(clean_acc):
        if clean_acc[n] <= disruption * before:
            return n
    return max(clean_acc)
