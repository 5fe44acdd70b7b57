"""Batched training augmentation on the device, drawn from an explicit generator.

One call augments a whole batch with tensor ops (airbench style) instead of a Python loop of
per-image PIL transforms: the same random crop with zero padding and horizontal flip that
BackdoorBench's torchvision pipeline applies, without DataLoader workers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad each image by ``pad`` zeros on every side and cut a random window of the original size."""
    if pad == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * pad)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    # Two gathers (rows, then columns) cut every image's own window in one pass over the batch.
    return padded.gather(2, rows).gather(3, cols)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, crop_pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """The training augmentation of a dataset (its ``crop_pad`` and ``flip``) on a float batch."""
    x = random_crop(x, crop_pad, generator)
    return random_flip(x, generator) if flip else x
