"""The background-shortcut hypothesis: generic perturbations, cross-trigger tests, and a clean-data cure.

Half of Fashion-MNIST's pixels are exactly 0: every image is a garment on a black background.
A trigger that touches every pixel at low amplitude (Blended's photograph, LF's smooth pattern,
SSBA's residual) also *lifts the background*, which no clean image ever does. A backdoored model
may therefore learn the cheaper rule "background lifted means target" instead of the trigger
itself, and clean fine-tuning data, all with black backgrounds, never contradicts that rule.

This module holds what the course needs to test the idea without any knowledge of a trigger:

* :data:`PERTURBATIONS`: trigger-free changes of an image (a uniform offset, a blend with flat
  gray, Gaussian noise), and :func:`target_rate`: how often a model sends perturbed non-target
  images to the target class;
* :func:`response_by_layer`: where in a network a perturbation's effect on the activations
  departs from a reference model's;
* :class:`PhotometricLift`: a photometric augmentation of the defender's clean images (random
  brightness offsets or blends with gray, labels unchanged) for the fine-tuning loop. If the
  explanation holds, fine-tuning with it contradicts the shortcut and removes those backdoors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import metrics
from .registry import Registry
from .rng import generator
from .settings import check_ranges, in_range, settings
from .training import BatchTransform

Perturbation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def uniform_offset(amount: float) -> Perturbation:
    """Add ``amount`` to every pixel (clipped to [0, 1]): the background rises from 0 to ``amount``."""
    return lambda x, gen: (x + amount).clamp(0, 1)


def gray_blend(alpha: float, level: float = 0.5) -> Perturbation:
    """Blend with a flat gray image, as Blended blends its photograph: ``(1 - alpha) x + alpha * level``."""
    return lambda x, gen: (1 - alpha) * x + alpha * level


def gaussian_noise(sigma: float) -> Perturbation:
    """Add zero-mean Gaussian noise of std ``sigma`` (clipped: on a black background it lifts half the pixels)."""
    return lambda x, gen: (x + sigma * torch.randn(x.shape, generator=gen, device=x.device)).clamp(0, 1)


PERTURBATIONS: Registry[Perturbation] = Registry("perturbation")
PERTURBATIONS.register("offset +0.05", uniform_offset(0.05))
PERTURBATIONS.register("offset +0.1", uniform_offset(0.1))
PERTURBATIONS.register("offset +0.2", uniform_offset(0.2))
PERTURBATIONS.register("blend gray 0.1", gray_blend(0.1))
PERTURBATIONS.register("blend gray 0.2", gray_blend(0.2))
PERTURBATIONS.register("noise 0.05", gaussian_noise(0.05))
PERTURBATIONS.register("noise 0.1", gaussian_noise(0.1))


def target_rate(
    model: nn.Module,
    images: torch.Tensor,
    perturb: Perturbation | None,
    target: int,
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> float:
    """Share of ``images`` (uint8 non-target images) that ``model`` assigns to ``target`` after ``perturb``.

    ``perturb=None`` measures the unperturbed images: the baseline rate (the model's errors into the
    target class). Perturbed images stay float, unrounded: an offset of 0.05 is 12.75 / 255.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {got}")
    x = images.float() / 255
    if perturb is not None:
        x = perturb(x, generator(seed, "generic-perturbation"))
    return metrics.attack_success_rate(metrics.predict(model, x, batch_size, device), target)


def response_by_layer(
    model: nn.Module,
    images: torch.Tensor,
    perturb: Perturbation,
    layers: list[str],
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """How much ``perturb`` changes each layer's output: ||f(x') - f(x)|| / ||f(x)||, over ``images``.

    A relative change, so models of different scale compare: where the backdoored model's value
    departs from a clean model's, the perturbation has started to be read as something else.
    """
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise ValueError(f"unknown layer(s) {', '.join(unknown)}; the model has e.g. {', '.join(list(modules)[1:6])}")
    device = torch.device(device)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o.float()))
        for name in layers
    ]
    diff = dict.fromkeys(layers, 0.0)
    base = dict.fromkeys(layers, 0.0)
    gen = generator(seed, "generic-perturbation")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = images[start : start + batch_size].to(device).float() / 255
                model(x)
                clean = dict(captured)
                model(perturb(x, gen))
                for name in layers:
                    diff[name] += (captured[name] - clean[name]).pow(2).sum().item()
                    base[name] += clean[name].pow(2).sum().item()
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {name: (diff[name] / base[name]) ** 0.5 if base[name] > 0 else 0.0 for name in layers}


@settings
class PhotometricConfig:
    """A photometric augmentation that lifts the background of clean images; labels unchanged.

    It uses no knowledge of any trigger: brightness offsets and blends with flat gray are standard
    photometric augmentations. Each image of a batch is changed with probability ``prob``: half of
    those get a uniform offset drawn from [0, ``max_offset``], the other half a blend
    ``(1 - a) x + a * level`` with ``a`` from [0, ``max_blend``] and a gray ``level`` from [0.25, 1].
    """

    prob: float = 0.5
    max_offset: float = 0.3
    max_blend: float = 0.3

    def __post_init__(self) -> None:
        check_ranges(self, prob=in_range(0, 1), max_offset=in_range(0, 1), max_blend=in_range(0, 1))


class PhotometricLift(BatchTransform):
    """:class:`PhotometricConfig` as the training loop's batch hook (after crop and flip).

    Draws from the loop's own augmentation generator, so a run is as reproducible as the loop.
    """

    def __init__(self, config: PhotometricConfig = PhotometricConfig()) -> None:
        self.config = config

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        cfg, n = self.config, len(x)

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator, device=x.device)

        changed = uniform(0, 1) < cfg.prob
        offset = uniform(0, 1) < 0.5  # which of the changed images get an offset (the rest: a blend)
        lifted = (x + uniform(0, cfg.max_offset)).clamp(0, 1)
        a = uniform(0, cfg.max_blend)
        blended = (1 - a) * x + a * uniform(0.25, 1)
        out = torch.where(changed & offset, lifted, torch.where(changed, blended, x))
        return out, y
