"""Controls for the two observations: statistics that separate a real effect from a confound.

For Observation 1: NWCs of different layers differ by orders of magnitude (a layer's
size and depth set how far ascent moves it), so statistics pooled over all neurons partly measure
that layers differ, not that the two runs pick the same neurons. The functions below separate
the two: correlations within each layer, a pooled correlation of within-layer z-scores, and the
top-k overlap a ranking would reach if it knew only each neuron's layer.

Observation 2 adds one: a model's loss and accuracy on the clean images *before* unlearning, since
gradient norms scale with how wrong a model is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .data import ImageData
from .observations import correlation, flatten_layers, top_k_overlap
from .rng import generator


def _same_layers(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> None:
    if list(x) != list(y):
        raise ValueError(f"both runs need the same layers in the same order, got {list(x)} and {list(y)}")
    shapes = {name: (tuple(x[name].shape), tuple(y[name].shape)) for name in x if x[name].shape != y[name].shape}
    if shapes:
        raise ValueError(f"layer shapes differ between the runs: {shapes}")


def per_layer_correlation(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """:func:`correlation` (Pearson and Spearman) of two per-layer vectors, layer by layer.

    A layer whose values are constant in either run has no correlation: NaN (a layer needs >= 2 neurons).
    """
    _same_layers(x, y)
    out = {}
    for name in x:
        a, b = x[name].double().flatten(), y[name].double().flatten()
        if a.numel() >= 2 and (a.std() == 0 or b.std() == 0):
            out[name] = {"pearson": float("nan"), "spearman": float("nan")}
        else:
            out[name] = correlation(a, b)
    return out


def standardize_per_layer(per_layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each layer's values as z-scores within that layer (mean 0, population std 1; a constant layer gives 0)."""
    out = {}
    for name, v in per_layer.items():
        v = v.double().flatten()
        std = v.std(unbiased=False)
        out[name] = (v - v.mean()) / std if std > 0 else torch.zeros_like(v)
    return out


def standardized_correlation(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> dict[str, float]:
    """Pearson and Spearman over all neurons after z-scoring each layer within itself, in both runs.

    A pure between-layer effect (one layer moving more than another in both runs) adds nothing here:
    what is left is whether neurons that move more than their layer's average in one run do so in the other.
    """
    _same_layers(x, y)
    sx, _ = flatten_layers(standardize_per_layer(x))
    sy, _ = flatten_layers(standardize_per_layer(y))
    return correlation(sx, sy)


def log_correlation(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Pearson and Spearman of log10 values over the pairs where both are > 0 (the pairs a log plot shows).

    Pearson on log10 values matches a least-squares line fitted on log axes; Spearman is the same
    on either scale. ``kept`` is the number of pairs used.
    """
    x, y = x.double().flatten(), y.double().flatten()
    if x.shape != y.shape:
        raise ValueError(f"need two vectors of equal length, got {tuple(x.shape)} and {tuple(y.shape)}")
    keep = (x > 0) & (y > 0)
    r = correlation(x[keep].log10(), y[keep].log10())
    return {**r, "kept": int(keep.sum())}


def top_k_layer_counts(per_layer: dict[str, torch.Tensor], k: int) -> dict[str, int]:
    """How many of the k largest values over all layers (as :func:`top_k_overlap` picks them) lie in each layer."""
    values, where = flatten_layers(per_layer)
    if not 0 < k <= values.numel():
        raise ValueError(f"need 0 < k <= {values.numel()}, got k={k}")
    counts = dict.fromkeys(per_layer, 0)
    for i in values.topk(k).indices.tolist():
        counts[where[i][0]] += 1
    return counts


def layer_preserving_overlap(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], k: int) -> float:
    """Expected :func:`top_k_overlap` of ``x`` and ``y`` if ``y`` were shuffled within each layer.

    Shuffling within a layer keeps each layer's values, so the top-k of ``y`` keeps ``c_l`` neurons in
    layer ``l`` and only *which* ``c_l`` of its ``n_l`` neurons changes, uniformly. With ``a_l`` of the
    top-k of ``x`` in that layer, the expected overlap is ``sum_l a_l c_l / n_l / k`` (exact when no
    ties straddle the k-th value). It equals ``k / N`` for a single layer and is larger when both top
    sets crowd into the same small layers: the overlap a ranking reaches by knowing only the layers.
    """
    _same_layers(x, y)
    a, c = top_k_layer_counts(x, k), top_k_layer_counts(y, k)
    return sum(a[name] * c[name] / x[name].numel() for name in x) / k


def shuffled_overlaps(
    x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], k: int, *, seed: int, draws: int = 50
) -> torch.Tensor:
    """:func:`top_k_overlap` of ``x`` with ``draws`` copies of ``y`` shuffled within each layer; (draws,) tensor.

    The spread of the layer-preserving baseline (:func:`layer_preserving_overlap` is its mean). The
    shuffles come from :func:`tsbd_utils.rng.generator` with ``seed``: the same seed, the same draws.
    """
    _same_layers(x, y)
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    flat_x, _ = flatten_layers(x)
    g = generator(seed, "layer-shuffle")
    out = []
    for _ in range(draws):
        shuffled = {name: v.flatten()[torch.randperm(v.numel(), generator=g)] for name, v in y.items()}
        flat_y, _ = flatten_layers(shuffled)
        out.append(top_k_overlap(flat_x, flat_y, k))
    return torch.tensor(out, dtype=torch.float64)


def loss_and_accuracy(
    model: nn.Module,
    data: ImageData,
    *,
    target: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` (eval mode, no augmentation), before any step.

    With ``target``, also the accuracy on the images of that class alone (``target_acc``; NaN if none).
    Observation 2's gradients scale with how wrong the model is on the images, so this is the starting
    point its comparison depends on. The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses, preds = [], []
    try:
        with torch.inference_mode():
            for start in range(0, len(data), batch_size):
                x = metrics.as_float_batch(data.x[start : start + batch_size].to(device))
                logits = model(x).float()
                y = data.y[start : start + batch_size].to(device)
                losses.append(F.cross_entropy(logits, y, reduction="sum").cpu())
                preds.append(logits.argmax(1).cpu())
    finally:
        model.train(was_training)
    if not preds:
        raise ValueError("no images to evaluate")
    pred = torch.cat(preds)
    out = {"loss": float(torch.stack(losses).sum() / len(data)), "acc": metrics.accuracy(pred, data.y)}
    if target is not None:
        on = data.y == target
        out["target_acc"] = metrics.accuracy(pred[on], data.y[on]) if on.any() else float("nan")
    return out
