"""LF: a smooth (low-frequency) universal perturbation towards the target class."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..rng import generator
from .base import Attack, AttackConfig, AttackContext


@dataclass(frozen=True)
class LFConfig(AttackConfig):
    eps: float = 0.2  # L-infinity bound of the pattern (BackdoorBench's CIFAR-10 pattern peaks at 51/255)
    cutoff: float = 0.1  # low-pass cut-off in cycles per pixel (Nyquist is 0.5): keeps a few smooth blobs
    images: int = 1000  # clean training images the universal perturbation is fitted on
    steps: int = 200  # sign-gradient steps at the paper profile (scaled by the profile's epoch_scale)
    step_size: float = 0.01  # L-infinity step per iteration
    batch_size: int = 128


def low_pass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Keep only spatial frequencies below ``cutoff`` cycles/pixel (a circular window in Fourier space)."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device)[:, None]
    fx = torch.fft.fftfreq(w, device=x.device)[None, :]
    window = ((fy**2 + fx**2).sqrt() <= cutoff).to(x.dtype)
    return torch.fft.ifft2(torch.fft.fft2(x) * window).real


class LF(Attack):
    """LF, low-frequency trigger (Zeng, Park, Mohammadi, Jia, ICCV 2021).

    Paper: *Rethinking the Backdoor Attacks' Triggers: A Frequency Perspective*,
    https://arxiv.org/abs/2104.03413. BackdoorBench adds a pre-computed pattern: a targeted
    universal adversarial perturbation of a clean model, smoothed by a low-pass filter, which it
    ships as a file per dataset and model. This suite computes it: projected sign-gradient steps
    that push clean images towards the target class through the cached clean model (BackdoorBench
    uses DeepFool iterations), a Fourier low-pass after every step, then the L-infinity bound.
    The pattern is added to the image. Dirty-label, 10% of the training images from all classes;
    the backdoored model is trained from scratch.
    """

    name = "lf"
    title = "LF"
    citation = (
        "Zeng et al., Rethinking the Backdoor Attacks' Triggers: A Frequency Perspective, ICCV 2021 "
        "(https://arxiv.org/abs/2104.03413)"
    )
    config_class = LFConfig

    def _prepare(self, context: AttackContext) -> None:
        steps = max(1, round(self.config.steps * context.profile.epoch_scale))
        fields = {"resource": "lf-pattern", "config": self.config, "steps": steps}
        self.state = {
            "pattern": context.cached("resource", fields, lambda: {"pattern": self._fit(context, steps)})["pattern"]
        }

    def _fit(self, context: AttackContext, steps: int) -> torch.Tensor:
        cfg, device = self.config, context.device
        model = context.get_clean_model().to(device).eval()
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
            with torch.no_grad():  # descend towards the target, then keep it smooth and bounded
                delta = low_pass(delta - cfg.step_size * grad.sign(), cfg.cutoff).clamp(-cfg.eps, cfg.eps)
        return delta.detach().cpu()

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.state["pattern"].to(x.device, x.dtype)
