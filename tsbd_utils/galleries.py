"""Figures of images: a grid of samples, the trigger gallery, what a defense found beside the real trigger.

Images come as (C, H, W) tensors, uint8 or float in [0, 1], grayscale or RGB. The functions are
also reachable as ``plotting.<name>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure


def show_image(ax, image: torch.Tensor, title: str | None = None) -> None:
    """One (C, H, W) image, uint8 or float in [0, 1], grayscale or RGB, without axes."""
    img = image.detach().cpu()
    img = img.float() / 255 if img.dtype == torch.uint8 else img.float()
    img = img.clamp(0, 1).permute(1, 2, 0).numpy()
    if img.shape[2] == 1:
        ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=8, fontweight="normal")


def image_grid(
    images: torch.Tensor,
    nrows: int,
    ncols: int,
    *,
    title: str,
    row_labels: Sequence[str] | None = None,
    cell: float = 1.0,
) -> Figure:
    """A grid of images filled row by row, with optional row labels on the left."""
    if len(images) < nrows * ncols:
        raise ValueError(f"{len(images)} images cannot fill a {nrows} x {ncols} grid")
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell + 1.5, nrows * cell + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        show_image(ax, images[i])
    if row_labels is not None:
        for ax, label in zip(axes[:, 0], row_labels):
            ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def trigger_gallery(clean: torch.Tensor, poisoned: dict[str, torch.Tensor], *, title: str, cell: float = 1.5) -> Figure:
    """One column per attack: the clean image, the poisoned image, and the residual amplified to full range.

    ``clean`` is one image (C, H, W); ``poisoned`` maps an attack's title to its poisoned version of
    it (the same image for every attack, so the triggers can be compared). Each residual |x' - x| is
    stretched so that its largest value is white; the factor is printed under it.
    """
    names = list(poisoned)
    fig, axes = plt.subplots(3, len(names), figsize=(len(names) * cell + 1.2, 3 * cell + 0.8), squeeze=False)
    x = clean.float() / 255 if clean.dtype == torch.uint8 else clean.float()
    for col, name in enumerate(names):
        p = poisoned[name].float() / 255 if poisoned[name].dtype == torch.uint8 else poisoned[name].float()
        residual = (p - x).abs().amax(0, keepdim=True)
        gain = 1.0 / max(residual.max().item(), 1e-8)
        show_image(axes[0, col], x, name)
        show_image(axes[1, col], p)
        show_image(axes[2, col], (residual * gain).clamp(0, 1))
        axes[2, col].set_xlabel(f"x{gain:.0f}", fontsize=8)
    for row, label in enumerate(("clean", "poisoned", "|residual|\namplified")):
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def found_trigger_gallery(
    real: dict[str, torch.Tensor], found: dict[str, tuple[torch.Tensor, str]], *, title: str, cell: float = 1.8
) -> Figure:
    """Two rows, one column per attack: the real trigger's |residual| above what a defense found.

    ``real`` maps an attack's title to |x_bd - x| (C, H, W); ``found`` maps it to the defense's image
    (C, H, W: a reversed stamp, a universal perturbation) and a caption. Each image is shown as the sum
    of its absolute channels, on its own colour scale: the shapes are compared, not the amplitudes.
    """
    if set(real) != set(found):
        raise ValueError(f"real and found must name the same attacks; got {sorted(real)} and {sorted(found)}")
    names = list(real)
    fig, axes = plt.subplots(2, len(names), figsize=(cell * len(names), 2.5 * cell + 0.2), squeeze=False)
    for col, name in enumerate(names):
        image, caption = found[name]
        for row, (shown, label) in enumerate(((real[name], f"{name}\nreal trigger"), (image, caption))):
            ax = axes[row, col]
            ax.imshow(shown.detach().cpu().float().abs().sum(0).numpy(), cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            ax.set_title(label, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
