"""SIG: a horizontal sinusoid added to images of the target class (clean-label)."""

from __future__ import annotations

import math

import torch

from ..settings import in_range, settings
from .base import Attack, AttackConfig, AttackContext


@settings
class SIGConfig(AttackConfig):
    delta: float = 40 / 255  # amplitude of the signal in [0, 1] pixels (BackdoorBench: 40 on 0-255)
    frequency: int = 6  # periods across the image width (BackdoorBench: f = 6)

    limits = {"delta": in_range(0, 1, low_open=True)}  # pixel units


class SIG(Attack):
    """SIG (Barni, Kallas, Tondi, ICIP 2019): add delta * sin(2 pi j f / W) to every pixel of column j.

    Paper: *A New Backdoor Attack in CNNs by Training Set Corruption Without Label Poisoning*,
    https://arxiv.org/abs/1902.11237. **Clean-label**: only images that already belong to the
    target class are poisoned and keep their label. As in BackdoorBench the count is 10% of the
    whole training set, which on a balanced 10-class set is every target-class image: the model
    learns that the signal means "target", and clean target-class images (which never carry it
    during training) are predicted less reliably, so clean accuracy drops by design.
    """

    name = "sig"
    title = "SIG"
    state_keys = ("pattern",)
    citation = "Barni et al., A New Backdoor Attack in CNNs ..., ICIP 2019 (https://arxiv.org/abs/1902.11237)"
    config_class = SIGConfig
    clean_label = True

    def _prepare(self, context: AttackContext) -> None:
        _, h, w = self.shape
        columns = torch.arange(w, dtype=torch.float32)
        row = self.config.delta * torch.sin(2 * math.pi * columns * self.config.frequency / w)
        self.state = {"pattern": row.expand(h, w).reshape(1, 1, h, w).clone()}

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.state["pattern"].to(x.device, x.dtype)
