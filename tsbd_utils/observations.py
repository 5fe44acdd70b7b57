"""The measurements behind TSBD's two observations: neuron weight change and activeness (unlearning: .unlearning).

Observation 1 (Lin et al., NeurIPS 2024, Fig. 1a): unlearn a backdoored model twice, once on
clean data (gradient *ascent* until clean accuracy falls to chance) and once on poisoned data
with the target label (until the ASR falls under 5%). Per neuron, the two weight changes are
positively correlated, so clean unlearning alone, which a defender can run, points at the
neurons that carry the backdoor.

Observation 2 (Fig. 1b): during one epoch of clean unlearning, the neurons of a backdoored model
have larger gradient norms ("activeness") than those of a clean model.

A *neuron* is one output channel of a conv layer; NWC (neuron weight change) is the L1 norm of
that channel's weight change, over every conv layer except the 1x1 shortcut projections, as in
the official code (``linweiii/TSBD``, ``defense/tsbd.py``).

Example:
    >>> un = unlearning.clean_unlearn(model, splits.clean, spec=splits.spec, seed=0, max_epochs=200)
    >>> nwc = neuron_weight_change(model, un.model)          # {layer name: (out_channels,) tensor}
    >>> act = activeness(model, splits.clean, spec=splits.spec, seed=0)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .data import DatasetSpec, ImageData
from .training import train
from .unlearning import AscentStep, UnlearnConfig

RECORD_LAYER = "layer4.1.conv2"  # the paper's recorded layer: PreActResNet18's last conv (8w neurons)


def nwc_layers(model: nn.Module) -> list[str]:
    """Names of the conv layers whose neurons NWC ranks: every ``Conv2d`` but the shortcut projections."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in name]


def _conv_weights(model: nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    missing = [name for name in layers if not isinstance(modules.get(name), nn.Conv2d)]
    if missing:
        raise ValueError(f"not conv layers of this model: {missing}; allowed: {nwc_layers(model)}")
    return {name: modules[name].weight.detach() for name in layers}


def weight_changes(original: nn.Module, changed: nn.Module, layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """|w_changed - w_original| per conv layer, shaped (out_channels, in x kh x kw), on the CPU."""
    layers = layers if layers is not None else nwc_layers(original)
    before, after = _conv_weights(original, layers), _conv_weights(changed, layers)
    out = {}
    for name in layers:
        if before[name].shape != after[name].shape:
            raise ValueError(f"{name}: shapes differ, {tuple(before[name].shape)} vs {tuple(after[name].shape)}")
        out[name] = (after[name].float().cpu() - before[name].float().cpu()).abs().flatten(1)
    return out


def neuron_weight_change(
    original: nn.Module, changed: nn.Module, layers: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """NWC per neuron: the L1 norm of each output channel's weight change, per conv layer."""
    return {name: delta.sum(1) for name, delta in weight_changes(original, changed, layers).items()}


def flatten_layers(per_layer: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[str, int]]]:
    """All neurons' values in one vector, with (layer, channel) for each position."""
    values = torch.cat([v.flatten() for v in per_layer.values()])
    where = [(name, k) for name, v in per_layer.items() for k in range(v.numel())]
    return values, where


@dataclass
class Activeness:
    """Per-neuron gradient L1 norms of one layer over one epoch of clean unlearning."""

    mean: torch.Tensor  # (out_channels,) average over the epoch's batches (official grad_avg)
    var: torch.Tensor  # (out_channels,) variance over the batches (official grad_var)
    layer: str


def activeness(
    model: nn.Module,
    clean: ImageData,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    layer: str = RECORD_LAYER,
    config: UnlearnConfig = UnlearnConfig(),
) -> Activeness:
    """Observation 2: record ``layer``'s per-channel gradient norm during one epoch of clean unlearning.

    Runs on a copy (``model`` is untouched), in train mode with augmentation, exactly one epoch of
    :func:`clean_unlearn`'s ascent with no stopping rule.
    """
    copied = copy.deepcopy(model)
    module = dict(copied.named_modules()).get(layer)
    if not isinstance(module, nn.Conv2d):
        raise ValueError(f"layer {layer!r} is not a conv layer of this model; allowed: {nwc_layers(copied)}")
    step = AscentStep(record=module)
    train(copied, clean, config.train_config(1), spec=spec, seed=seed, device=device, step=step, progress=False)
    norms = torch.stack(step.norms)
    return Activeness(norms.mean(0), norms.var(0, unbiased=False), layer)


def correlation(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Pearson and Spearman correlation of two equal-length vectors (scipy's, ties averaged)."""
    from scipy import stats

    x, y = x.double().flatten().cpu().numpy(), y.double().flatten().cpu().numpy()
    if x.shape != y.shape or len(x) < 2:
        raise ValueError(f"need two vectors of equal length >= 2, got {x.shape} and {y.shape}")
    return {"pearson": float(stats.pearsonr(x, y)[0]), "spearman": float(stats.spearmanr(x, y)[0])}


def top_k_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Share of the k largest entries of ``a`` that are also among the k largest of ``b``."""
    if a.shape != b.shape or not 0 < k <= a.numel():
        raise ValueError(f"need equal shapes and 0 < k <= {a.numel()}, got {tuple(a.shape)}, {tuple(b.shape)}, k={k}")
    top_a = set(a.flatten().topk(k).indices.tolist())
    top_b = set(b.flatten().topk(k).indices.tolist())
    return len(top_a & top_b) / k

