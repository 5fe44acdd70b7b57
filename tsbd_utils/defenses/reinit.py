"""TSBD's stage 1: rank neurons by their weight change under clean unlearning (NWC), zero the largest changes
of the top ones in the original model, and the suite's clean-data rule for how many (n).

Official code: ``zero_reinit_weight``. Notebook 04 walks through it; notebook 08 compares it with the other
reinitialization schemes of :data:`REINIT_SCHEMES` and with the oracle's n (:func:`oracle_neuron_ratio`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..observations import flatten_layers, nwc_layers, weight_changes
from ..registry import Registry


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


@dataclass
class Stage1Choice:
    """Which weights stage 1 resets, from the weight changes alone (no model needed)."""

    neurons: dict[str, list[int]]  # per layer: the chosen neurons (output channels), largest NWC first
    masks: dict[str, torch.Tensor]  # per layer: bool (out, in x kh x kw), True for the weights to reset
    threshold: float | None  # the smallest reset |dw|; None when m leaves no weight to reset


def stage1_choice(changes: dict[str, torch.Tensor], neuron_ratio: float, weight_ratio: float) -> Stage1Choice:
    """Stage 1's pick from per-layer weight changes |dw| shaped (out_channels, in x kh x kw).

    The neurons of all layers are ranked together by NWC (the row sums of |dw|) and the top
    ``int(neuron_ratio * neurons)`` kept; their changes are pooled, and the threshold is the smallest of the
    top ``int(weight_ratio * len(pooled))``. A weight is reset when its neuron is kept and its change reaches the
    threshold: the top-m share of the kept neurons' changes, not whole neurons.
    """
    if not (0 <= neuron_ratio <= 1 and 0 <= weight_ratio <= 1):
        raise ValueError(f"neuron_ratio {neuron_ratio!r} and weight_ratio {weight_ratio!r} must be in [0, 1]")
    if not changes:
        raise ValueError("no weight changes given (a dict of layer name -> |dw| per neuron)")
    chosen = top_neurons({name: delta.sum(1) for name, delta in changes.items()}, neuron_ratio)
    pooled = torch.cat([changes[name][rows].flatten() for name, rows in chosen.items()])
    n_weights = int(weight_ratio * len(pooled))
    threshold = pooled.topk(n_weights).values.min() if n_weights else None
    masks = {}
    for name, delta in changes.items():
        mask = torch.zeros_like(delta, dtype=torch.bool)
        rows = chosen[name]
        if rows and threshold is not None:
            mask[rows] = delta[rows] >= threshold
        masks[name] = mask
    return Stage1Choice(chosen, masks, float(threshold) if threshold is not None else None)


def _redraw(weight: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> None:
    """Set the masked weights of a conv layer to fresh draws from its default initialization (PyTorch's
    ``Conv2d.reset_parameters``: Kaiming-uniform with a = sqrt(5), that is U(-1/sqrt(fan_in), 1/sqrt(fan_in)))."""
    fresh = torch.empty(weight.shape, dtype=torch.float32)
    nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
    weight[mask] = fresh.to(weight.device, weight.dtype)[mask]


# How stage 1 resets the weights it picks (the paper's Table 3). Each scheme receives one layer's weight, the
# mask of the top-m weight changes among its top-n neurons, the rows of those neurons, and a seeded generator;
# it changes the weight in place and returns how many weights it reset.
REINIT_SCHEMES: Registry[Callable[[torch.Tensor, torch.Tensor, list[int], torch.Generator], int]] = Registry(
    "reinitialization scheme"
)


@REINIT_SCHEMES.register("zero")
def _zero_subweights(weight, mask, rows, generator) -> int:
    """TSBD: zero the top-m share of the chosen neurons' weight changes (official ``zero_reinit_weight``)."""
    weight.masked_fill_(mask, 0.0)
    return int(mask.sum())


@REINIT_SCHEMES.register("zero-neurons")
def _zero_neurons(weight, mask, rows, generator) -> int:
    """Zero every weight of the chosen neurons, whatever their change (m plays no part)."""
    weight[rows] = 0.0
    return len(rows) * weight[0].numel()


@REINIT_SCHEMES.register("random")
def _random_subweights(weight, mask, rows, generator) -> int:
    """Re-draw the same weights TSBD zeroes from the layer's default initialization, instead of zeroing them."""
    _redraw(weight, mask, generator)
    return int(mask.sum())


def reinitialize(
    model: nn.Module,
    unlearned: nn.Module,
    neuron_ratio: float,
    weight_ratio: float = 0.7,
    scheme: str = "zero",
    *,
    seed: int = 0,
    layers: list[str] | None = None,
    changes: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` whose top-NWC neurons are reset by ``scheme`` (a key of :data:`REINIT_SCHEMES`).

    1. NWC per neuron (output channel) of each layer from ``model`` to ``unlearned``; all layers
       ranked together; the top ``int(neuron_ratio * neurons)`` kept.
    2. Their individual changes |dw| pooled; the threshold is the smallest of the top
       ``int(weight_ratio * len)``; the weights of those neurons with |dw| >= threshold are the picked ones.
    3. ``"zero"`` (TSBD) zeroes the picked weights, ``"random"`` re-draws them from the layer's default
       initialization (seeded by ``seed``), ``"zero-neurons"`` zeroes the chosen neurons whole.

    Returns the copy and a record: neurons and reset weights per layer (``zeroed_weights``, also for
    ``"random"``, where they are re-drawn), the threshold and the scheme. ``changes`` (the weight changes of
    ``weight_changes(model, unlearned, layers)``, computed once) saves recomputing them for many n and m.
    """
    reset = REINIT_SCHEMES[scheme]
    if layers is None:
        layers = list(changes) if changes is not None else nwc_layers(model)
    changes = changes if changes is not None else weight_changes(model, unlearned, layers)
    if not all(bool(torch.isfinite(changes[name]).all()) for name in layers):
        # A diverged unlearning (NaN weights): every comparison with NaN is false, so nothing would be reset.
        warnings.warn("the unlearned model has non-finite weights (its unlearning diverged): NWC is undefined and "
                      "stage 1 resets no NaN-ranked weight", RuntimeWarning, stacklevel=2)
    choice = stage1_choice(changes, neuron_ratio, weight_ratio)
    n_top = sum(len(rows) for rows in choice.neurons.values())
    total = sum(len(changes[name]) for name in layers)
    reinit = copy.deepcopy(model)
    modules = dict(reinit.named_modules())
    record: dict[str, Any] = {"neurons": n_top, "total_neurons": total, "threshold": None, "layers": {}}
    if scheme != "zero":
        record["scheme"] = scheme  # TSBD's records stay as they were
    # Zeroing whole neurons ignores m; the other schemes reset nothing when m leaves no weight.
    if n_top == 0 or (choice.threshold is None and scheme != "zero-neurons"):
        record["zeroed_weights"] = 0
        return reinit, record
    generator = torch.Generator().manual_seed(seed)
    zeroed = 0
    with torch.no_grad():
        for name in layers:
            rows = choice.neurons[name]
            if not rows:
                continue
            weight = modules[name].weight
            count = reset(weight, choice.masks[name].view_as(weight).to(weight.device), rows, generator)
            record["layers"][name] = {"neurons": len(rows), "zeroed_weights": count}
            zeroed += count
    record.update(threshold=choice.threshold, zeroed_weights=zeroed)
    return reinit, record


def zero_reinit(
    model: nn.Module,
    unlearned: nn.Module,
    neuron_ratio: float,
    weight_ratio: float = 0.7,
    layers: list[str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """TSBD's stage 1: a copy of ``model`` with the top weight changes of the top-NWC neurons set to zero
    (:func:`reinitialize` with ``scheme="zero"``). Returns the copy and a record: neurons and zeroed weights
    per layer, the threshold."""
    return reinitialize(model, unlearned, neuron_ratio, weight_ratio, "zero", layers=layers)


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


ORACLE_MAX_DROP = 0.03  # the oracle's accuracy budget: at most 3 points below the backdoored model's test ACC


def oracle_neuron_ratio(
    test: dict[float, tuple[float, float]], before_acc: float, max_drop: float = ORACLE_MAX_DROP
) -> float | None:
    """A labelled *oracle* n, what a table tuned on the test set would report: among the candidates whose test
    ACC stays within ``max_drop`` (absolute) of ``before_acc``, the one with the lowest test ASR (ties: the
    smaller n). ``test`` maps n to (test ACC, test ASR); it can only come from the test set
    (:meth:`~tsbd_utils.defenses.base.OracleData.evaluate`), which no defender holds. None when no candidate
    keeps its accuracy."""
    if not test:
        raise ValueError("no candidate neuron ratios given")
    if not 0 <= max_drop <= 1:
        raise ValueError(f"max_drop must be in [0, 1], got {max_drop!r}")
    ok = [(asr, n) for n, (acc, asr) in test.items() if acc >= before_acc - max_drop]
    return min(ok)[1] if ok else None
