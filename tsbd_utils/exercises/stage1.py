"""Notebook 04: which weights TSBD's stage 1 sets to zero.

The student writes ``stage1_masks(changes, n, m)``: ``changes`` maps each conv layer to its weight changes
|dw| shaped (out_channels, in x kh x kw). The neurons (rows) of *all* layers are ranked together by NWC, the row
sum; the top ``int(n * neurons)`` are kept; their changes are pooled and the threshold is the smallest of the
top ``int(m * len(pooled))``. It returns, per layer, a bool mask of |dw|'s shape: True for a weight of a kept
neuron whose change reaches the threshold.
"""

from __future__ import annotations

from typing import Any

import torch

from ..defenses.reinit import stage1_choice
from .feedback import call, fail, keeps_rng, same_tensor, show, which_mistake

# Layers of very different sizes and scales, so that a per-layer ranking, whole neurons or a per-neuron
# quantile all pick other weights than the global rule.
LAYERS = {"conv1": (4, 9), "layer1.conv": (6, 36), "layer2.conv": (8, 54)}
CASES = {"example": [(0, 0.25, 0.7)], "thorough": [(1, 0.1, 0.7), (2, 0.5, 0.3), (3, 0.3, 0.0), (4, 0.0, 0.7)]}


def inputs(seed: int) -> dict[str, torch.Tensor]:
    """Seeded |dw| per layer, each layer on its own scale (as deeper layers move less per weight)."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=g) * (1.0 / (1 + i)) ** 2 for i, (name, shape) in enumerate(
        LAYERS.items())}


def reference(changes: dict[str, torch.Tensor], n: float, m: float) -> dict[str, torch.Tensor]:
    """The suite's stage-1 masks (:func:`tsbd_utils.defenses.reinit.stage1_choice`)."""
    return stage1_choice(changes, n, m).masks


def _whole_neurons(changes, n, m):
    chosen = stage1_choice(changes, n, m).neurons
    masks = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in changes.items()}
    for k, rows in chosen.items():
        masks[k][rows] = True
    return masks


def _per_layer(changes, n, m):
    return {k: stage1_choice({k: v}, n, m).masks[k] for k, v in changes.items()}


def _per_neuron_quantile(changes, n, m):
    chosen = stage1_choice(changes, n, m).neurons
    masks = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in changes.items()}
    for k, rows in chosen.items():
        for r in rows:
            row = changes[k][r]
            keep = int(m * row.numel())
            if keep:
                masks[k][r] = row >= row.topk(keep).values.min()
    return masks


MISTAKES = {
    "these are whole neurons: TSBD zeroes only the top-m share of the kept neurons' weight changes": _whole_neurons,
    "this ranks the neurons of each layer separately: rank the neurons of all layers together": _per_layer,
    "this takes the m-quantile within each neuron: pool the changes of all kept neurons, one threshold":
        _per_neuron_quantile,
}


def _same_masks(got: Any, expected: dict[str, torch.Tensor]) -> bool:
    return isinstance(got, dict) and set(got) == set(expected) and all(same_tensor(got[k], v) for k, v in
                                                                     expected.items())


@keeps_rng
def check(stage1_masks: Any, *, thorough: bool = False) -> None:
    """Compare ``stage1_masks`` with the suite's stage 1 on layers built so that the usual mistakes differ."""
    for seed, n, m in CASES["example"] + (CASES["thorough"] if thorough else []):
        changes = inputs(seed)
        text = f"changes=<|dw| of {len(changes)} layers: " + ", ".join(
            f"{k} {tuple(v.shape)}" for k, v in changes.items()) + f">, n={n}, m={m}"
        got = call(stage1_masks, "stage1_masks", text, {k: v.clone() for k, v in changes.items()}, n, m)
        expected = reference(changes, n, m)
        if _same_masks(got, expected):
            continue
        summary = ", ".join(f"{k}: {int(v.sum())}" for k, v in expected.items())
        if not isinstance(got, dict) or set(got) != set(expected):
            fail(f"stage1_masks({text})", f"a dict with the keys {list(expected)}", show(got))
        counts = ", ".join(f"{k}: {int(torch.as_tensor(v).sum())}" for k, v in got.items())
        hint = which_mistake(got, {k: f(changes, n, m) for k, f in MISTAKES.items()}, _same_masks)
        fail(f"stage1_masks({text})", f"bool masks with this many True per layer: {summary}",
             f"masks with {counts}", hint)
