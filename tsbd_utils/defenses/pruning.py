"""Choosing how much to prune from learned neuron masks: the threshold sweep ANP and RNP share.

Both defenses end with one mask value per BatchNorm channel (:mod:`.masks`). :func:`prune_sweep`
prunes a copy of the original model at every threshold from 0 to ``pruning_max`` and keeps one,
chosen with the defender's clean images (the suite's rule) or, as a labelled oracle, with the test
set as BackdoorBench does (:func:`common.choose_amount`). Their configs share the pruning fields
checked here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..data import ImageData
from ..settings import in_range, one_of
from .base import OracleData
from .common import ORACLE_RULES, PRUNING_CHOICES, choose_amount, working_copy
from .masks import masks_record, prune_neurons


def thresholds(pruning_max: float, pruning_step: float) -> list[float]:
    """0, step, 2 step, ... up to ``pruning_max`` (BackdoorBench's sweep: 0 to 0.9 by 0.05, 19 values)."""
    count = math.floor(pruning_max / pruning_step + 1e-9)
    return [round(i * pruning_step, 10) for i in range(count + 1)]


# The ranges of the pruning fields that ANP's and RNP's configs share (for settings.check_ranges).
PRUNING_RANGES = {
    "pruning_max": in_range(0, 1),
    "pruning_step": in_range(0, 1, low_open=True),
    "acc_ratio": in_range(0, 1, high_open=True),
    "choice": one_of(PRUNING_CHOICES),
    "oracle_rule": one_of(ORACLE_RULES),
}


def prune_sweep(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    config: Any,
    *,
    clean: ImageData,
    device: str | torch.device,
    oracle: OracleData | None = None,
) -> tuple[nn.Module, float, list[dict[str, Any]]]:
    """Prune a copy of ``model`` at each threshold of the config's sweep and keep the chosen one.

    ``config`` supplies ``pruning_max``, ``pruning_step``, ``acc_ratio``, ``choice`` and
    ``oracle_rule`` (see :func:`common.choose_amount`: ``"clean"`` uses the defender's ``clean``
    images only; ``"oracle"`` is BackdoorBench's test-set choice and needs ``oracle``). Threshold 0
    prunes nothing, so the first row is the unpruned reference. One copy serves every candidate:
    its BN weights are restored before each pruning. Returns the pruned copy (eval mode), the
    threshold and one row per candidate (threshold as ``amount``, accuracies, ``pruned`` count).
    """
    pruned = working_copy(model, device)
    original = {name: m.weight.detach().clone() for name, m in pruned.named_modules() if name in masks}
    counts: dict[float, int] = {}

    def apply(threshold: float) -> nn.Module:
        with torch.no_grad():
            for name, weight in original.items():
                pruned.get_submodule(name).weight.copy_(weight)
        counts[threshold] = prune_neurons(pruned, masks, threshold)
        return pruned

    chosen, rows = choose_amount(
        thresholds(config.pruning_max, config.pruning_step),
        apply,
        clean=clean,
        device=device,
        acc_ratio=config.acc_ratio,
        choice=config.choice,
        oracle=oracle,
        oracle_rule=config.oracle_rule,
        identity=counts.get,  # thresholds prune nested sets: the same count is the same pruned model
    )
    for row in rows:
        row["pruned"] = counts[row["amount"]]
    apply(chosen)
    return pruned.eval(), chosen, rows


def pruning_record(
    config: Any, masks: Mapping[str, torch.Tensor], threshold: float, rows: list[dict[str, Any]], **stages: Any
) -> dict[str, Any]:
    """The JSON record ANP and RNP return: the choice, the threshold, the sweep, their own ``stages``, the masks."""
    return {
        "choice": config.choice,
        "threshold": threshold,
        "pruned": next(row["pruned"] for row in rows if row["amount"] == threshold),
        "neurons": sum(len(v) for v in masks.values()),
        "rows": rows,
        **stages,
        "masks": masks_record(masks),
        "config": dataclasses.asdict(config),
    }
