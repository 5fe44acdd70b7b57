"""Metrics as pure functions of predictions, plus ``predict``.

Conventions (BackdoorBench, TSBD): ACC is accuracy on the clean test set; ASR the share of
backdoor test images (target-class images excluded) classified as the target; RA the share of
the same images classified as their true class. All three are fractions in [0, 1]; tables show
them x100. DER (FT-SAM, Zhu et al. ICCV 2023) rewards an ASR drop and charges an ACC drop.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn


def _check_pair(pred: torch.Tensor, labels: torch.Tensor) -> None:
    if not (isinstance(pred, torch.Tensor) and isinstance(labels, torch.Tensor)):
        raise TypeError(
            f"predictions and labels must be torch tensors (torch.as_tensor(...)), got {type(pred).__name__} "
            f"and {type(labels).__name__}"
        )
    if pred.shape != labels.shape or pred.ndim != 1:
        raise ValueError(f"predictions {tuple(pred.shape)} and labels {tuple(labels.shape)} must be equal 1-d shapes")
    if len(pred) == 0:
        raise ValueError("no predictions to score")


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of predictions equal to the labels."""
    _check_pair(pred, labels)
    return (pred == labels).double().mean().item()


def attack_success_rate(
    pred: torch.Tensor, target: int, true_labels: torch.Tensor | None = None, num_classes: int | None = None
) -> float:
    """Share of backdoor test images classified as ``target``.

    If ``true_labels`` is given, images whose true class is already the target are left out
    (BackdoorBench builds its backdoor test set without them). ``num_classes`` (the dataset's)
    refuses a target no prediction can equal, which would otherwise score a silent 0.
    """
    if not (isinstance(target, int) and not isinstance(target, bool) and target >= 0):
        raise ValueError(f"target must be a class index (an int >= 0), got {target!r}")
    if num_classes is not None and target >= num_classes:
        raise ValueError(f"target {target} is not a class of this dataset; allowed: 0 to {num_classes - 1}")
    if true_labels is not None:
        _check_pair(pred, true_labels)
        pred = pred[true_labels != target]
        if len(pred) == 0 and len(true_labels):
            raise ValueError(f"every true label is the target class {target}: no backdoor image is left to score")
    return accuracy(pred, torch.full_like(pred, target))


def robust_accuracy(pred: torch.Tensor, true_labels: torch.Tensor) -> float:
    """Share of backdoor test images still classified as their true class."""
    return accuracy(pred, true_labels)


def defense_effectiveness_rating(acc_bd: float, asr_bd: float, acc_def: float, asr_def: float) -> float:
    """DER = [max(0, ASR_bd - ASR_def) - max(0, ACC_bd - ACC_def) + 1] / 2, in [0, 1].

    Inputs are fractions in [0, 1] (not percentages). An unchanged model scores 0.5; removing a
    100% ASR at no accuracy cost scores 1.
    """
    for name, value in (("acc_bd", acc_bd), ("asr_bd", asr_bd), ("acc_def", acc_def), ("asr_def", asr_def)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):  # NumPy floats too
            raise TypeError(f"{name} must be a fraction (a number in [0, 1]), got {value!r}")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} = {value!r} is outside [0, 1]; pass fractions, not percentages")
    return (max(0.0, asr_bd - asr_def) - max(0.0, acc_bd - acc_def) + 1.0) / 2.0


def psnr(clean: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [0, 1] (inf where identical)."""
    if clean.shape != poisoned.shape:
        raise ValueError(f"shapes differ: {tuple(clean.shape)} vs {tuple(poisoned.shape)}")
    mse = (clean.float() - poisoned.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def linf(clean: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor:
    """Largest absolute pixel change per image (L-infinity norm of the trigger's residual)."""
    return (clean.float() - poisoned.float()).abs().flatten(1).amax(1)


def weight_distance(a: nn.Module, b: nn.Module) -> float:
    """L2 distance between two models of one architecture over every floating-point parameter and buffer
    (BatchNorm statistics included): 0.0 exactly when a defense returned the weights unchanged."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        raise ValueError(f"the models differ in their tensors: {sorted(set(sa) ^ set(sb))[:5]}")
    total = torch.zeros((), dtype=torch.float64)
    for name, ta in sa.items():
        tb = sb[name]
        if ta.shape != tb.shape:
            raise ValueError(f"tensor {name} has shape {tuple(ta.shape)} in one model, {tuple(tb.shape)} in the other")
        if ta.is_floating_point():
            total += (ta.detach().cpu().double() - tb.detach().cpu().double()).pow(2).sum()
    return float(total.sqrt())


def as_float_batch(batch: torch.Tensor) -> torch.Tensor:
    """A batch of images as float in [0, 1]: uint8 scaled, float checked (finite, in range); else an error."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(255)
    if not batch.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1], got {batch.dtype}")
    if batch.numel():
        bad = int((~torch.isfinite(batch)).sum())
        if bad:
            raise ValueError(f"images hold {bad} NaN or infinite values; allowed: finite values in [0, 1]")
        low, high = torch.aminmax(batch)
        if not (0 <= low.item() and high.item() <= 1):
            raise ValueError(f"float images must lie in [0, 1] (uint8 images are scaled here), got values in "
                             f"[{low.item():.3g}, {high.item():.3g}]")
    return batch.float()


def predict(
    model: nn.Module, images: torch.Tensor, batch_size: int = 1024, device: str | torch.device | None = None
) -> torch.Tensor:
    """Predicted labels (int64, on the CPU) for uint8 or [0, 1] float images (N, C, H, W).

    Runs in eval mode under ``torch.inference_mode()`` in large batches and restores the
    model's train/eval mode afterwards.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and images.shape[1] != first.in_channels:
        raise ValueError(f"images have {images.shape[1]} channel(s); this model takes {first.in_channels}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = as_float_batch(images[start : start + batch_size].to(device, non_blocking=True))
                out.append(model(batch).argmax(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)
