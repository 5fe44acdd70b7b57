"""CLP: Channel Lipschitzness-based Pruning (Zheng et al., ECCV 2022, https://arxiv.org/abs/2208.03111).

A data-free defense. A backdoor makes a few channels very sensitive to their input (a small
trigger must flip the output), so their Lipschitz constant stands out. For a conv channel k
followed by a BatchNorm, the upper bound of its channel Lipschitz constant (UCLC) is the largest
singular value of its kernel, reshaped to (in_channels, kh * kw), times |gamma_k / sigma_k|. In
each layer, channels with UCLC > mean + u * std are pruned by zeroing their BN weight and bias.

As BackdoorBench runs it (``defense/clp.py``): modules are visited in registration order and
each BatchNorm is paired with the most recently seen conv; u = 3; no fine-tuning; no data.

Caveat for PreActResNet18: its blocks run BN -> ReLU -> conv, so a block's ``bn2`` does follow
``conv1``, but ``bn1`` normalises the block's *input* (the previous block's ``conv2`` plus its
shortcut) and is paired with whichever of those convs was registered last. The pairing is
therefore approximate there, as the CLP author and BackdoorBench's code comments acknowledge;
the suite keeps BackdoorBench's pairing and records it (``record["pairs"]``).

Defender holds: the backdoored model only (no data at all: ``clean`` may be ``None``).
Defaults: u = 3 (BackdoorBench logs a sweep of u over linspace(0, 10, 21) but uses 3).

Example:
    >>> result = DEFENSES["clp"](model, None, CLPConfig(), spec=splits.spec, seed=0)
    >>> result.record["pruned"]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..config import Profile
from ..data import DatasetSpec
from ..settings import check_ranges, non_negative, replace_checked, settings
from .base import Budget, DefenseResult, DefenseSpec, register
from .common import working_copy


@settings
class CLPConfig:
    """CLP settings; no epochs, so every profile runs the same."""

    u: float = 3.0  # prune channels whose UCLC exceeds the layer's mean + u * std

    def __post_init__(self) -> None:
        check_ranges(self, u=non_negative)

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> CLPConfig:
        return replace_checked(cls(), **overrides)


def channel_lipschitz(model: nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """UCLC per channel for each BatchNorm: ``{bn_name: (paired_conv_name, uclc (C,))}``.

    Pairs each BatchNorm2d with the last nn.Conv2d registered before it whose output channels
    match (BackdoorBench's pairing); BatchNorms with no such conv are skipped.
    """
    result: dict[str, tuple[str, torch.Tensor]] = {}
    conv_name, conv = None, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            conv_name, conv = name, module
        elif isinstance(module, nn.BatchNorm2d) and conv is not None and conv.out_channels == module.num_features:
            with torch.no_grad():
                scale = (module.weight / (module.running_var + module.eps).sqrt()).abs()
                kernel = conv.weight.float() * scale.view(-1, 1, 1, 1)
                # Largest singular value of each channel's (in, kh * kw) kernel, all channels at once.
                uclc = torch.linalg.matrix_norm(kernel.flatten(2), ord=2)
            result[name] = (conv_name, uclc.cpu())
    return result


def defend(
    model: nn.Module,
    clean: Any = None,
    config: CLPConfig | None = None,
    *,
    spec: DatasetSpec | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> DefenseResult:
    """Zero the BN weight and bias of each layer's outlier-UCLC channels in a copy of ``model``.

    Data-free: ``clean``, ``spec`` and ``seed`` are accepted for the common call shape and never read.
    """
    config = config or CLPConfig()
    repaired = working_copy(model, device)
    modules = dict(repaired.named_modules())
    layers, pairs, total = {}, {}, 0
    for bn_name, (conv_name, uclc) in channel_lipschitz(repaired).items():
        threshold = uclc.mean() + config.u * uclc.std()
        index = torch.nonzero(uclc > threshold).flatten()
        bn = modules[bn_name]
        with torch.no_grad():
            bn.weight[index.to(bn.weight.device)] = 0
            bn.bias[index.to(bn.bias.device)] = 0
        layers[bn_name] = index.tolist()
        pairs[bn_name] = conv_name
        total += len(index)
    record = {"pruned": total, "pruned_channels": layers, "pairs": pairs, "config": dataclasses.asdict(config)}
    return DefenseResult(repaired.eval(), record)


def budget(config: CLPConfig, images: int, record: dict[str, Any] | None = None) -> Budget:
    """CLP's budget: none; it reads the weights only (one singular value per channel)."""
    return Budget("weights only (no data, no training)", 0, 0, 0)


register(
    DefenseSpec(
        name="clp",
        title="CLP",
        paper=(
            'Zheng, Tang, Li and Liu, "Data-Free Backdoor Removal Based on Channel Lipschitzness", ECCV 2022'
        ),
        url="https://arxiv.org/abs/2208.03111",
        config=CLPConfig,
        defend=defend,
        holds="no data",
        options=(),
        paper_average=(89.32, 78.01, 58.68),
        budget=budget,
    )
)
