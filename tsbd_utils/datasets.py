"""The datasets the suite knows: what each one is, and where its files come from.

A :class:`DatasetSpec` describes a dataset (classes, image shape, normalization statistics, the
augmentation BackdoorBench applies to it) and how to find, read and download its files. The
registry ``DATASETS`` holds Fashion-MNIST (offline default, Debian's ``dataset-fashion-mnist``),
CIFAR-10 and GTSRB (through torchvision). ``data.load`` does the looking and loading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import readers
from .registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is (shape, classes, statistics, valid augmentation) and where it comes from."""

    name: str
    title: str  # human name for headings
    num_classes: int
    channels: int
    size: int  # images are size x size
    mean: tuple[float, ...]  # per-channel statistics used by the model's first module
    std: tuple[float, ...]
    classes: tuple[str, ...]
    crop_pad: int  # random-crop padding in training augmentation
    flip: bool  # horizontal flips in training augmentation (BackdoorBench: CIFAR-10 only)
    find: Callable[[Path], Path | None] = field(repr=False, compare=False)  # where in a folder the files are
    read: Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]] = field(repr=False, compare=False)
    fetch: Callable[[Path], None] = field(repr=False, compare=False)  # torchvision download into a folder
    # what a folder that holds part of the dataset lacks (nothing when it holds all of it or none of it)
    lacks: Callable[[Path], list[str]] = field(default=lambda folder: [], repr=False, compare=False)
    how_to_get: str = ""  # shown when the dataset is missing
    system_dirs: tuple[str, ...] = ()  # where an OS package installs it


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _lacking(needed: dict[str, bool]) -> list[str]:
    """The absent ones of ``needed`` (path -> present) when some, not all, are present: a partial copy."""
    absent = [path for path, present in needed.items() if not present]
    return absent if 0 < len(absent) < len(needed) else []


# ---------------------------------------------------------------- Fashion-MNIST
_FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_fmnist(folder: Path) -> Path | None:
    for place in (folder, folder / "fashion-mnist", folder / "FashionMNIST" / "raw"):
        if all(_idx_file(place, stem) for stem in _FMNIST_FILES):
            return place
    return None


def _fmnist_lacks(folder: Path) -> list[str]:
    for place in (folder, folder / "fashion-mnist", folder / "FashionMNIST" / "raw"):
        absent = _lacking({str(place / (stem + ".gz")): _idx_file(place, stem) is not None for stem in _FMNIST_FILES})
        if absent:
            return absent
    return []


def _read_fmnist(place: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if train else "t10k"
    return readers.read_idx_pair(
        _idx_file(place, f"{prefix}-images-idx3-ubyte"), _idx_file(place, f"{prefix}-labels-idx1-ubyte")
    )


def _fetch_fmnist(root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), train=True, download=True)


DATASETS.register(
    "fashion_mnist",
    DatasetSpec(
        name="fashion_mnist",
        title="Fashion-MNIST",
        num_classes=10,
        channels=1,
        size=28,
        mean=(0.2860,),
        std=(0.3530,),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        crop_pad=2,
        flip=False,
        find=_find_fmnist,
        lacks=_fmnist_lacks,
        read=_read_fmnist,
        fetch=_fetch_fmnist,
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        how_to_get=(
            "install the Debian package: `sudo apt-get update && sudo apt-get install dataset-fashion-mnist`; "
            "or put the four IDX files ("
            + ", ".join(s + ".gz" for s in _FMNIST_FILES)
            + ") in a folder and set TSBD_DATA_DIR (or DATA_DIR) to it; or allow the torchvision download (internet)"
        ),
    ),
)


# ---------------------------------------------------------------- CIFAR-10
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _find_cifar10(folder: Path) -> Path | None:
    place = folder / "cifar-10-batches-py"
    return place if all((place / n).is_file() for n in _CIFAR10_FILES) else None


def _cifar10_lacks(folder: Path) -> list[str]:
    place = folder / "cifar-10-batches-py"
    return _lacking({str(place / n): (place / n).is_file() for n in _CIFAR10_FILES})


def _fetch_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(str(root), train=True, download=True)


DATASETS.register(
    "cifar10",
    DatasetSpec(
        name="cifar10",
        title="CIFAR-10",
        num_classes=10,
        channels=3,
        size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.247, 0.243, 0.261),  # BackdoorBench's (from WaNet)
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        crop_pad=4,
        flip=True,
        find=_find_cifar10,
        lacks=_cifar10_lacks,
        read=readers.read_cifar10,
        fetch=_fetch_cifar10,
        how_to_get=(
            "run once with internet (torchvision downloads it, 170 MB), or copy an existing "
            "`cifar-10-batches-py/` folder (the python version from https://www.cs.toronto.edu/~kriz/cifar.html) "
            "into a folder and set TSBD_DATA_DIR (or DATA_DIR) to that folder"
        ),
    ),
)

# ---------------------------------------------------------------- GTSRB
_GTSRB_CLASSES = (
    "speed limit 20",
    "speed limit 30",
    "speed limit 50",
    "speed limit 60",
    "speed limit 70",
    "speed limit 80",
    "end of speed limit 80",
    "speed limit 100",
    "speed limit 120",
    "no passing",
    "no passing over 3.5t",
    "right of way at next crossing",
    "priority road",
    "yield",
    "stop",
    "no vehicles",
    "no vehicles over 3.5t",
    "no entry",
    "general caution",
    "curve left",
    "curve right",
    "double curve",
    "bumpy road",
    "slippery road",
    "road narrows right",
    "road work",
    "traffic signals",
    "pedestrians",
    "children crossing",
    "bicycles crossing",
    "ice or snow",
    "wild animals",
    "end of all limits",
    "turn right ahead",
    "turn left ahead",
    "ahead only",
    "straight or right",
    "straight or left",
    "keep right",
    "keep left",
    "roundabout",
    "end of no passing",
    "end of no passing over 3.5t",
)


def _gtsrb_parts(folder: Path) -> dict[str, bool]:
    base = folder / "gtsrb"
    return {
        str(base / "GTSRB" / "Training"): (base / "GTSRB" / "Training").is_dir(),
        str(base / "GTSRB" / "Final_Test" / "Images"): (base / "GTSRB" / "Final_Test" / "Images").is_dir(),
        str(base / "GT-final_test.csv"): (base / "GT-final_test.csv").is_file(),
    }


def _find_gtsrb(folder: Path) -> Path | None:
    return folder if all(_gtsrb_parts(folder).values()) else None


def _gtsrb_lacks(folder: Path) -> list[str]:
    return _lacking(_gtsrb_parts(folder))


def _fetch_gtsrb(root: Path) -> None:
    from torchvision.datasets import GTSRB

    for split in ("train", "test"):
        GTSRB(str(root), split=split, download=True)


DATASETS.register(
    "gtsrb",
    DatasetSpec(
        name="gtsrb",
        title="GTSRB",
        num_classes=43,
        channels=3,
        size=32,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),  # BackdoorBench does not standardize GTSRB
        classes=_GTSRB_CLASSES,
        crop_pad=4,
        flip=False,  # flipping turns "keep left" into "keep right"
        find=_find_gtsrb,
        lacks=_gtsrb_lacks,
        read=readers.read_gtsrb,
        fetch=_fetch_gtsrb,
        how_to_get=(
            "run once with internet (torchvision downloads it, about 300 MB), or place torchvision's layout "
            "(`gtsrb/GTSRB/Training/<class>/*.ppm`, `gtsrb/GTSRB/Final_Test/Images/*.ppm`, `gtsrb/GT-final_test.csv`) "
            "in a folder and set TSBD_DATA_DIR (or DATA_DIR) to that folder"
        ),
    ),
)
