"""Models that take pixels in [0, 1] and normalize them as their first module.

PreActResNet18 follows BackdoorBench's ``models/preact_resnet.py`` structure and module names
(``conv1``, ``layer1``..``layer4`` of blocks ``layerK.J`` with ``bn1``, ``conv1``, ``bn2``,
``conv2`` and, where the shape changes, ``shortcut``; head ``linear``), so layer names such as
``layer4.1.conv2`` (TSBD's recorded layer) mean the same here as in the paper. Two additions:
a ``normalize`` module in front (pixel-space triggers, perturbations and masks stay outside the
model) and a ``width`` (64 is the paper's model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry
from .rng import seeded


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers, so they move with the model and are saved with it."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} must have one positive std per channel")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., 2016): BN-ReLU-conv, twice, plus the shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            # A 1x1 projection only where the shape changes, as in BackdoorBench (``shortcut.0``).
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection sees the pre-activated input, the identity the raw one (BackdoorBench).
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreActResNet18 as in BackdoorBench, for pixel inputs in [0, 1].

    3x3 stem with stride 1 and no max-pool, pre-activation blocks [2, 2, 2, 2] at widths
    w, 2w, 4w, 8w, no final BN, global average pooling, linear head. ``width=64`` is the
    11.17M-parameter model of the paper.

    Args:
        num_classes: output classes.
        in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR-10 and GTSRB).
        width: channels of the stem and of layer1.
        mean, std: per-channel statistics of the first module, ``Normalize``.

    Shape:
        input (N, in_channels, H, W) floats in [0, 1]; output (N, num_classes) logits.

    Example:
        >>> model = PreActResNet18(num_classes=10, in_channels=1, width=16)
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2 or in_channels < 1 or width < 1:
            raise ValueError(
                f"need num_classes >= 2, in_channels >= 1, width >= 1; got {num_classes}, {in_channels}, {width}"
            )
        mean = tuple(mean) if mean is not None else (0.0,) * in_channels
        std = tuple(std) if std is not None else (1.0,) * in_channels
        if len(mean) != in_channels:
            raise ValueError(f"mean {mean} has {len(mean)} channels, the model takes {in_channels}")
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        planes, layers = width, []
        for index, stride in enumerate((1, 2, 2, 2)):
            out_planes = width * 2**index
            layers.append(
                nn.Sequential(PreActBlock(planes, out_planes, stride), PreActBlock(out_planes, out_planes, 1))
            )
            planes = out_planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate features, the input of ``linear`` (FP and Trojan look here)."""
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.avgpool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")
MODELS.register("preactresnet18", PreActResNet18)


def build_model(
    name: str, *, num_classes: int, in_channels: int, width: int, mean: Sequence[float], std: Sequence[float], seed: int
) -> nn.Module:
    """A freshly initialised model from the registry; the same seed gives the same weights."""
    builder = MODELS[name]
    with seeded(seed, f"init:{name}"):
        return builder(num_classes=num_classes, in_channels=in_channels, width=width, mean=mean, std=std)


def model_for(profile, spec, seed: int) -> nn.Module:
    """The profile's model for a dataset spec (classes, channels, normalization)."""
    return build_model(
        profile.model,
        num_classes=spec.num_classes,
        in_channels=spec.channels,
        width=profile.width,
        mean=spec.mean,
        std=spec.std,
        seed=seed,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
