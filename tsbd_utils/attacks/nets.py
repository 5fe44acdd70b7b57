"""Small image-to-image networks for the attacks that learn their triggers (SSBA, Input-aware)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A two-level U-Net: H -> H/2 -> H/4 and back, with skip connections; any H (28 or 32).

    Skips carry the image's own detail to the output, which is what a sample-specific trigger
    (a pattern that depends on the image) needs.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 16) -> None:
        super().__init__()
        self.down0 = _block(in_channels, width)
        self.down1 = _block(width, 2 * width, stride=2)
        self.down2 = _block(2 * width, 4 * width, stride=2)
        self.up1 = _block(4 * width + 2 * width, 2 * width)
        self.up0 = _block(2 * width + width, width)
        self.out = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d0 = self.down0(x)
        d1 = self.down1(d0)
        d2 = self.down2(d1)
        u1 = self.up1(torch.cat([F.interpolate(d2, size=d1.shape[-2:], mode="nearest"), d1], 1))
        u0 = self.up0(torch.cat([F.interpolate(u1, size=d0.shape[-2:], mode="nearest"), d0], 1))
        return self.out(u0)


class BitDecoder(nn.Module):
    """Recovers a bit string from an image: strided convolutions, a 4x4 pool, a linear layer of logits."""

    def __init__(self, in_channels: int, bits: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(2 * width * 16, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def module_state(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's tensors under ``prefix.`` (to keep several networks in one attack state)."""
    return {f"{prefix}.{k}": v.detach().cpu() for k, v in module.state_dict().items()}


def load_module(prefix: str, module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    module.load_state_dict({k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")})
    return module.eval()
