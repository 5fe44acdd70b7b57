"""LF: a smooth (low-frequency), brightening-only universal perturbation towards the target class."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..rng import generator
from ..settings import in_range, settings
from .base import Attack, AttackConfig, AttackContext


@settings
class LFConfig(AttackConfig):
    eps: float = 0.2  # the pattern spans exactly [0, eps] after every update (BackdoorBench: [0, 51/255])
    sigma_at_32: float = 6.0  # std of the Gaussian low-pass in pixels of a 32-pixel image (BackdoorBench: 6)
    images: int = 1000  # clean training images the universal perturbation is fitted on
    steps: int = 200  # gradient steps at the paper profile (scaled by the profile's epoch_scale)
    # Largest change of any pixel by one update, before smoothing and rescaling: as large as the pattern's
    # range, as one DeepFool update (a step to the decision boundary) is. Much smaller steps leave the
    # repeated low-pass to shape the pattern alone (a centred blob whatever the model).
    step_size: float = 0.2
    batch_size: int = 128

    limits = {"eps": in_range(0, 1, low_open=True)}  # pixel units; every other setting > 0, as AttackConfig asks


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian low-pass of (N, C, H, W) images, each channel alone, zero padding.

    Zero padding, as BackdoorBench's filter has, pulls the borders towards 0: repeated smoothing
    then concentrates the pattern in the middle of the image.
    """
    radius = max(1, math.ceil(2.5 * sigma))
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (grid / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    rows = kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    cols = kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    x = F.conv2d(x, rows, padding=(radius, 0), groups=c)
    return F.conv2d(x, cols, padding=(0, radius), groups=c)


def rescale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Min-max rescale over the whole pattern to [0, eps] (a flat pattern becomes a flat 0)."""
    span = x.max() - x.min()
    return (x - x.min()) / span.clamp_min(1e-12) * eps


class LF(Attack):
    """LF, low-frequency trigger (Zeng, Park, Mohammadi, Jia, ICCV 2021).

    Paper: *Rethinking the Backdoor Attacks' Triggers: A Frequency Perspective*,
    https://arxiv.org/abs/2104.03413. BackdoorBench ships a pre-computed pattern per dataset and
    model: a targeted universal perturbation of a clean model (DeepFool iterations) that, after
    every update, is smoothed by a Gaussian low-pass and min-max rescaled to [0, 0.2]. The result
    only *brightens*: every pixel gains between 0 and 0.2, smoothly across the image. This suite
    computes its own pattern the same way, with one change: the update direction is a gradient
    step of the targeted cross-entropy over a batch of clean images (through the cached clean
    model) instead of DeepFool on one image at a time, which is faster and converges alike. The
    pattern is added to the image. Dirty-label, 10% of the training images from all classes; the
    backdoored model is trained from scratch.

    Example:
        >>> attack = LF().prepare(context)          # fits the pattern on the clean model
        >>> x_bd = attack.apply(x)                   # x + pattern, clipped to [0, 1]
    """

    name = "lf"
    title = "LF"
    state_keys = ("pattern",)
    citation = (
        "Zeng et al., Rethinking the Backdoor Attacks' Triggers: A Frequency Perspective, ICCV 2021 "
        "(https://arxiv.org/abs/2104.03413)"
    )
    config_class = LFConfig
    uses_clean_model = True  # prepare() fits its trigger against the clean model
    profile_scaled = ("steps",)

    def _prepare(self, context: AttackContext) -> None:
        steps = self.scaled_settings(context.profile)["steps"]
        fields = {"resource": "lf-pattern", "config": self.config, "steps": steps}
        self.state = {
            "pattern": context.cached("resource", fields, lambda: {"pattern": self._fit(context, steps)})["pattern"]
        }

    def _fit(self, context: AttackContext, steps: int) -> torch.Tensor:
        cfg, device = self.config, context.device
        model = context.get_clean_model().to(device).eval()
        sigma = cfg.sigma_at_32 * self.shape[-1] / 32
        n = min(cfg.images, len(context.train))
        pick = torch.randperm(len(context.train), generator=generator(context.seed, "lf-images"))[:n]
        images = context.train.x[pick].to(device).float() / 255
        target = torch.full((cfg.batch_size,), cfg.target, device=device)
        delta = torch.zeros(1, *self.shape, device=device)
        batches = math.ceil(n / cfg.batch_size)
        for step in range(steps):
            x = images[(step % batches) * cfg.batch_size :][: cfg.batch_size]
            delta.requires_grad_(True)
            loss = F.cross_entropy(model((x + delta).clamp(0, 1)), target[: len(x)])
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():  # towards the target; then smooth, and back to the range [0, eps]
                update = gaussian_blur(-grad, sigma)
                update = update / update.abs().max().clamp_min(1e-12) * cfg.step_size
                delta = rescale(gaussian_blur(delta + update, sigma), cfg.eps)
        return delta.detach().cpu()

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.state["pattern"].to(x.device, x.dtype)
