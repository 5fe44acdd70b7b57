"""Notebook 01: the Blended trigger on a batch of uint8 images.

The student writes ``blend(images, pattern, alpha)``: ``images`` uint8 (N, C, H, W) in 0..255, ``pattern`` a
float (1, C, H, W) image in [0, 1], ``alpha`` the blend weight of the pattern. It returns the poisoned batch as
uint8, ``(1 - alpha) x + alpha t`` on the [0, 1] scale, rounded, and leaves ``images`` untouched.
"""

from __future__ import annotations

from typing import Any

import torch

from ..attacks import ATTACKS
from .feedback import call, fail, keeps_rng, show, which_mistake

SHAPES = {"example": (4, 1, 8, 8), "thorough": (6, 3, 10, 10)}  # a grayscale batch, then an RGB one


def reference(images: torch.Tensor, pattern: torch.Tensor, alpha: float) -> torch.Tensor:
    """The suite's Blended attack with this pattern and alpha, applied as poisoned sets are stored (uint8)."""
    attack = ATTACKS["blended"](alpha=alpha)
    attack.load_state_dict({"shape": torch.tensor(images.shape[1:]), "pattern": pattern})
    return attack.apply_uint8(images)


def inputs(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded uint8 batch and a float pattern in [0, 1] of one image's shape."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    pattern = torch.rand((1, *shape[1:]), generator=g)
    return images, pattern


def _mistakes(images: torch.Tensor, pattern: torch.Tensor, alpha: float) -> dict[str, torch.Tensor]:
    x = images.float() / 255
    return {
        "alpha weighs the pattern, 1 - alpha the image: (1 - alpha) x + alpha t": reference(images, pattern, 1 - alpha),
        "the pattern is on the [0, 1] scale: bring the images to [0, 1] (divide by 255) before blending, or "
        "scale the pattern to 0..255": ((1 - alpha) * images.float() + alpha * pattern).round().clamp(0, 255),
        "the result is still on the [0, 1] scale: multiply by 255, round and convert to uint8":
            (1 - alpha) * x + alpha * pattern,
    }


def _close_uint8(got: Any, expected: torch.Tensor) -> bool:
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return False
    return bool((got.detach().float() - expected.float()).abs().max() <= 1)


@keeps_rng
def check(blend: Any, *, thorough: bool = False) -> None:
    """Compare ``blend`` with the suite's Blended attack: uint8 out, at most one grey level off per pixel
    (rounding), same shape, input untouched."""
    cases = [("example", 0.2, 0)] + ([("thorough", 0.35, 1), ("thorough", 0.8, 2)] if thorough else [])
    for size, alpha, seed in cases:
        images, pattern = inputs(SHAPES[size], seed)
        kept = images.clone()
        text = f"images=<uint8 batch of shape {tuple(images.shape)}>, pattern=<float {tuple(pattern.shape)}>, " \
               f"alpha={alpha}"
        got = call(blend, "blend", text, images, pattern, alpha)
        expected = reference(images, pattern, alpha)
        if not torch.equal(images, kept):
            fail(f"blend({text})", "images left as they were", "images changed in place",
                 "work on a new tensor (images.float() makes one) instead of writing into images")
        if isinstance(got, torch.Tensor) and got.dtype != torch.uint8 and got.shape == expected.shape:
            hint = which_mistake(got, _mistakes(images, pattern, alpha), _close_any)
            fail(f"blend({text})", show(expected), show(got), hint or "return uint8 images (0..255), as stored")
        if not _close_uint8(got, expected):
            hint = which_mistake(got, _mistakes(images, pattern, alpha), _close_any)
            fail(f"blend({text})", show(expected), show(got), hint)


def _close_any(got: Any, candidate: torch.Tensor) -> bool:
    if not isinstance(got, torch.Tensor) or got.shape != candidate.shape:
        return False
    return bool((got.detach().double() - candidate.double()).abs().max() <= 1.0 + 1e-6 * candidate.abs().max())
