"""BadNets: a small white square in the corner."""

from __future__ import annotations

import torch

from ..settings import in_range, settings
from .base import Attack, AttackConfig, AttackContext, corner_mask


@settings
class BadNetsConfig(AttackConfig):
    size: int = 3  # side of the square on a 32-pixel image (BackdoorBench's trigger_image.png); scaled with the image
    value: float = 1.0  # pixel value of the square (white)

    limits = {"value": in_range(0, 1)}  # a pixel value


class BadNets(Attack):
    """BadNets (Gu, Dolan-Gavitt, Garg, 2017): paste a white square into the bottom-right corner.

    Paper: *BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain*,
    https://arxiv.org/abs/1708.06733. BackdoorBench's trigger is a 3x3 white square at rows and
    columns 29-31 of a 32x32 image; here its side scales with the image (3 pixels on 28x28 too).
    Dirty-label: 10% of the training images, drawn from all classes, get the square and label 0.

    Example:
        >>> attack = BadNets().prepare(context)
        >>> x_bd = attack.apply(x)          # x: float (N, C, H, W) in [0, 1]
    """

    name = "badnets"
    title = "BadNets"
    state_keys = ("mask",)
    citation = "Gu et al., BadNets, arXiv 2017 (https://arxiv.org/abs/1708.06733)"
    config_class = BadNetsConfig

    def _prepare(self, context: AttackContext) -> None:
        self.state = {"mask": corner_mask(self.shape, self.config.size)}

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.state["mask"].to(x.device, x.dtype)
        return x * (1 - mask) + self.config.value * mask
