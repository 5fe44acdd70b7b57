"""Builders the unit tests share: a tiny dataset spec, tiny PreActResNet18s and small image sets, and a one-cell
notebook. Plain functions rather than fixtures, since most tests call them with their own sizes and seeds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nbformat
import torch

from tsbd_utils import data, models
from tsbd_utils.data import ImageData
from tsbd_utils.datasets import DatasetSpec


def tiny_spec(num_classes: int = 10) -> DatasetSpec:
    """Fashion-MNIST's spec with round normalization and a 1-pixel crop padding, for 16 x 16 test images."""
    return dataclasses.replace(data.DATASETS["fashion_mnist"], mean=(0.3,), std=(0.3,), crop_pad=1,
                               num_classes=num_classes)


def tiny_model(num_classes: int = 2, width: int = 4, seed: int = 0) -> torch.nn.Module:
    """A PreActResNet18 for one-channel images, ``width`` channels at its first layer (the paper's: 64)."""
    return models.build_model("preactresnet18", num_classes=num_classes, in_channels=1, width=width, mean=(0.3,),
                              std=(0.3,), seed=seed)


def separable_images(n: int, classes: int = 2, *, noise: float = 90, step: float = 140, size: int = 16,
                     seed: int = 0) -> ImageData:
    """``n`` grayscale images whose class (cycled: 0, 1, ...) sets their brightness, ``step`` per class, over uniform
    noise in [0, ``noise``): learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = (torch.rand(n, 1, size, size, generator=g) * noise + y[:, None, None, None] * step).to(torch.uint8)
    return ImageData(x, y.to(torch.int64))


def noise_images(n: int, classes: int = 2, *, size: int = 16, seed: int = 0, drawn_labels: bool = False) -> ImageData:
    """``n`` images of uniform noise, labels cycled (0, 1, ...) or, with ``drawn_labels``, drawn after the images
    from the same generator: nothing to learn."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g) if drawn_labels else torch.arange(n) % classes
    return ImageData(x, y)


# The parameters every notebook declares (tests/test_notebooks.py), which the runner passes to each.
RUNNER_PARAMETERS = ("PROFILE = 'quick'\nDATASET = None\nSEED = 0\nDEVICE = 'auto'\nCACHE_DIR = None\n"
                     "FIGURES_DIR = '.'\nRUN_DIR = None\nDATA_DIR = None")


def parameters_notebook(path: Path, params: str = "PROFILE = 'quick'\nSEED = 0", *more: str) -> Path:
    """A notebook at ``path`` with a ``parameters`` cell holding ``params``, then a code cell per ``more``."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, *(nbformat.v4.new_code_cell(code) for code in more)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path
