"""WaNet: an almost invisible warp of the image, learned on the fly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..rng import generator
from ..settings import non_negative, settings
from ..training import BatchTransform
from .base import Attack, AttackConfig, AttackContext, split_batch


@settings
class WaNetConfig(AttackConfig):
    k: int = 4  # control grid of the warp field is k x k (BackdoorBench: 4)
    s: float = 0.5  # strength of the warp (BackdoorBench: 0.5)
    grid_rescale: float = 1.0  # scale of the warped grid before clamping (BackdoorBench: 1)
    cross_ratio: float = 2.0  # "noise" samples per poisoned sample in a batch (BackdoorBench: 2)

    limits = {"cross_ratio": non_negative}


class WaNet(Attack):
    """WaNet (Nguyen, Tran, ICLR 2021): warp the image with a fixed smooth field.

    Paper: *WaNet - Imperceptible Warping-based Backdoor Attack*, https://arxiv.org/abs/2102.10369.
    A random k x k field, normalized and upsampled (bicubic) to the image, displaces every pixel
    by at most a few tenths of a pixel times ``s``. Poisoning happens on the fly: in every batch
    the first ``ratio`` share is warped and relabelled to the target, the next ``cross_ratio``
    times as many are warped with extra random jitter and keep their labels (the "noise mode",
    which forces the model to learn the exact field rather than any warp).
    """

    name = "wanet"
    title = "WaNet"
    state_keys = ("grid",)
    citation = "Nguyen and Tran, WaNet, ICLR 2021 (https://arxiv.org/abs/2102.10369)"
    config_class = WaNetConfig
    on_the_fly = True
    invisible = True
    constant_lr = True  # BackdoorBench's WaNet sets lr milestones past the last epoch

    def _prepare(self, context: AttackContext) -> None:
        _, h, _ = self.shape
        k = self.config.k
        noise = torch.rand(1, 2, k, k, generator=generator(context.seed, "wanet-field")) * 2 - 1
        noise = noise / noise.abs().mean()
        field = F.interpolate(noise, size=(h, h), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        line = torch.linspace(-1, 1, h)
        rows, cols = torch.meshgrid(line, line, indexing="ij")
        identity = torch.stack((cols, rows), dim=2)[None]  # grid_sample wants (x, y) order
        grid = ((identity + self.config.s * field / h) * self.config.grid_rescale).clamp(-1, 1)
        self.state = {"grid": grid}

    def warp(self, x: torch.Tensor, jitter: torch.Generator | None = None) -> torch.Tensor:
        """Warp ``x`` with the field; with ``jitter``, add the noise mode's random offsets too."""
        grid = self.state["grid"].to(x.device, x.dtype).expand(len(x), -1, -1, -1)
        if jitter is not None:
            h = grid.shape[1]
            offsets = torch.rand(grid.shape, generator=jitter, device=x.device, dtype=x.dtype) * 2 - 1
            grid = (grid + offsets / h).clamp(-1, 1)
        return F.grid_sample(x, grid, align_corners=True)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.warp(x)

    def batch_transform(self) -> BatchTransform:
        self._require_prepared()
        return WaNetPoisoning(self)


class WaNetPoisoning(BatchTransform):
    """Per batch: ``ratio`` warped and relabelled, ``cross_ratio`` times as many jittered, the rest clean."""

    def __init__(self, attack: WaNet) -> None:
        self.attack = attack

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        cfg = self.attack.config
        n_bd, n_cross = split_batch(len(x), cfg.ratio, cfg.cross_ratio)
        poisoned = self.attack.warp(x[:n_bd])
        crossed = self.attack.warp(x[n_bd : n_bd + n_cross], jitter=generator)
        x = torch.cat([poisoned, crossed, x[n_bd + n_cross :]])
        y = torch.cat([torch.full_like(y[:n_bd], cfg.target), y[n_bd:]])
        return x, y
