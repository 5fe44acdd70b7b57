"""Blended: a photograph mixed into every poisoned image."""

from __future__ import annotations

from pathlib import Path

import matplotlib.cbook
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..settings import in_range, settings
from .base import Attack, AttackConfig, AttackContext


@settings
class BlendedConfig(AttackConfig):
    alpha: float = 0.2  # blend weight of the trigger image, train and test (BackdoorBench: 0.2)
    image: str = "grace_hopper.jpg"  # a photograph shipped in matplotlib's sample data (no download)

    limits = {"alpha": in_range(0, 1, low_open=True, high_open=True)}

    def __post_init__(self) -> None:
        super().__post_init__()
        shipped = sample_images()
        if self.image not in shipped:
            raise ValueError(f"BlendedConfig.image {self.image!r} is not a sample image of matplotlib; "
                             f"allowed: {', '.join(shipped)}")


def sample_images() -> list[str]:
    """The photographs matplotlib ships (no download): the names ``BlendedConfig.image`` accepts."""
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def trigger_image(name: str, channels: int, size: int) -> torch.Tensor:
    """A sample photograph of matplotlib, resized to size x size, grayscale when ``channels`` is 1."""
    path = matplotlib.cbook.get_sample_data(name, asfileobj=False)
    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        # Crop the centre square first, so the photograph is not squeezed.
        side = min(img.size)
        left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
        img = img.crop((left, top, left + side, top + side))
        array = np.asarray(img, dtype=np.float32) / 255.0
    t = torch.from_numpy(array).reshape(side, side, channels).permute(2, 0, 1)[None]
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


class Blended(Attack):
    """Blended (Chen, Liu, Li, Lu, Song, 2017): x' = (1 - alpha) x + alpha t for a fixed image t.

    Paper: *Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning*,
    https://arxiv.org/abs/1712.05526. BackdoorBench blends a Hello Kitty picture with alpha 0.2;
    this suite blends a photograph that ships with matplotlib (Grace Hopper), so nothing is
    downloaded. Dirty-label, 10% of the training images from all classes.
    """

    name = "blended"
    title = "Blended"
    state_keys = ("pattern",)
    citation = (
        "Chen et al., Targeted Backdoor Attacks ... Data Poisoning, arXiv 2017 (https://arxiv.org/abs/1712.05526)"
    )
    config_class = BlendedConfig

    def _prepare(self, context: AttackContext) -> None:
        if not 0 < self.config.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.config.alpha!r}")
        c, h, _ = self.shape
        self.state = {"pattern": trigger_image(self.config.image, c, h)}

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        pattern = self.state["pattern"].to(x.device, x.dtype)
        return (1 - self.config.alpha) * x + self.config.alpha * pattern
