"""Datasets as in-memory uint8 tensors, and the splits every notebook works on.

Three datasets: Fashion-MNIST (the offline default: the Debian package ``dataset-fashion-mnist``),
CIFAR-10 and GTSRB (through torchvision: a download, or a folder you already have). A dataset is
looked for, in order, in an explicit ``data_dir``, in ``$TSBD_DATA_DIR``, in the system location
(Debian's), and only then downloaded. A missing dataset is an error that says how to get it; the
suite never substitutes synthetic data.

Images stay uint8 (N, C, H, W) at rest and become float in [0, 1] one batch at a time; the
model normalizes them itself (see models.py), so everything outside the model lives in pixel space.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import readers
from .registry import Registry
from .rng import generator


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is in none of the places looked at and could not be downloaded."""


@dataclass(frozen=True)
class ImageData:
    """A split: uint8 images (N, C, H, W) and int64 labels (N,), on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(f"ImageData.x must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.shape != (len(self.x),):
            raise ValueError(f"ImageData.y must be int64 ({len(self.x)},), got {self.y.dtype} {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> ImageData:
        """The images at ``index`` (a long tensor or a boolean mask), in that order."""
        index = index.to(self.x.device)
        return ImageData(self.x[index], self.y[index])

    def head(self, n: int) -> ImageData:
        """The first ``n`` images (RNP's 1% is the head of the 5% clean subset)."""
        return ImageData(self.x[:n], self.y[:n])

    def to(self, device: str | torch.device) -> ImageData:
        return ImageData(self.x.to(device), self.y.to(device))

    def float(self) -> torch.Tensor:
        """All images as float in [0, 1]. For large splits, convert batch by batch instead."""
        return self.x.float().div_(255)


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
    how_to_get: str = ""  # shown when the dataset is missing
    system_dirs: tuple[str, ...] = ()  # where an OS package installs it


DATASETS: Registry[DatasetSpec] = Registry("dataset")

# ---------------------------------------------------------------- Fashion-MNIST
_FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


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


def _read_fmnist(place: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if train else "t10k"
    return readers.read_idx_pair(_idx_file(place, f"{prefix}-images-idx3-ubyte"), _idx_file(place, f"{prefix}-labels-idx1-ubyte"))


def _fetch_fmnist(root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), train=True, download=True)


DATASETS.register("fashion_mnist", DatasetSpec(
    name="fashion_mnist", title="Fashion-MNIST", num_classes=10, channels=1, size=28,
    mean=(0.2860,), std=(0.3530,),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    crop_pad=2, flip=False,
    find=_find_fmnist, read=_read_fmnist, fetch=_fetch_fmnist,
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    how_to_get=(
        "install the Debian package (offline mirrors have it): `sudo apt-get update && sudo apt-get install "
        "dataset-fashion-mnist`; or put the four IDX files (" + ", ".join(s + ".gz" for s in _FMNIST_FILES)
        + ") in a folder and set TSBD_DATA_DIR (or DATA_DIR) to it; or allow the torchvision download (internet)"
    ),
))

# ---------------------------------------------------------------- CIFAR-10
def _find_cifar10(folder: Path) -> Path | None:
    place = folder / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return place if all((place / n).is_file() for n in names) else None


def _fetch_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(str(root), train=True, download=True)


DATASETS.register("cifar10", DatasetSpec(
    name="cifar10", title="CIFAR-10", num_classes=10, channels=3, size=32,
    mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261),  # BackdoorBench's (from WaNet)
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    crop_pad=4, flip=True,
    find=_find_cifar10, read=readers.read_cifar10, fetch=_fetch_cifar10,
    how_to_get=(
        "run once with internet (torchvision downloads it, 170 MB), or copy an existing "
        "`cifar-10-batches-py/` folder (the python version from https://www.cs.toronto.edu/~kriz/cifar.html) "
        "into a folder and set TSBD_DATA_DIR (or DATA_DIR) to that folder"
    ),
))

# ---------------------------------------------------------------- GTSRB
_GTSRB_CLASSES = (
    "speed limit 20", "speed limit 30", "speed limit 50", "speed limit 60", "speed limit 70",
    "speed limit 80", "end of speed limit 80", "speed limit 100", "speed limit 120", "no passing",
    "no passing over 3.5t", "right of way at next crossing", "priority road", "yield", "stop",
    "no vehicles", "no vehicles over 3.5t", "no entry", "general caution", "curve left",
    "curve right", "double curve", "bumpy road", "slippery road", "road narrows right",
    "road work", "traffic signals", "pedestrians", "children crossing", "bicycles crossing",
    "ice or snow", "wild animals", "end of all limits", "turn right ahead", "turn left ahead",
    "ahead only", "straight or right", "straight or left", "keep right", "keep left",
    "roundabout", "end of no passing", "end of no passing over 3.5t",
)


def _find_gtsrb(folder: Path) -> Path | None:
    base = folder / "gtsrb"
    ok = (base / "GTSRB" / "Training").is_dir() and (base / "GTSRB" / "Final_Test" / "Images").is_dir()
    return folder if ok and (base / "GT-final_test.csv").is_file() else None


def _fetch_gtsrb(root: Path) -> None:
    from torchvision.datasets import GTSRB

    for split in ("train", "test"):
        GTSRB(str(root), split=split, download=True)


DATASETS.register("gtsrb", DatasetSpec(
    name="gtsrb", title="GTSRB", num_classes=43, channels=3, size=32,
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),  # BackdoorBench does not standardize GTSRB
    classes=_GTSRB_CLASSES, crop_pad=4, flip=False,  # flipping turns "keep left" into "keep right"
    find=_find_gtsrb, read=readers.read_gtsrb, fetch=_fetch_gtsrb,
    how_to_get=(
        "run once with internet (torchvision downloads it, about 300 MB), or place torchvision's layout "
        "(`gtsrb/GTSRB/Training/<class>/*.ppm`, `gtsrb/GTSRB/Final_Test/Images/*.ppm`, `gtsrb/GT-final_test.csv`) "
        "in a folder and set TSBD_DATA_DIR (or DATA_DIR) to that folder"
    ),
))


# ---------------------------------------------------------------- finding and loading
def default_download_dir() -> Path:
    """Where downloads go when neither ``data_dir`` nor ``$TSBD_DATA_DIR`` is set."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tsbd" / "data"


def search_dirs(spec: DatasetSpec, data_dir: str | Path | None = None) -> list[Path]:
    """The folders looked in, in order: ``data_dir``, ``$TSBD_DATA_DIR``, system places, the download folder."""
    dirs = [Path(d) for d in (data_dir, os.environ.get("TSBD_DATA_DIR")) if d]
    return dirs + [Path(d) for d in spec.system_dirs] + [default_download_dir()]


def locate(spec: DatasetSpec, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding ``spec``'s files, downloading them if allowed and nowhere to be found."""
    looked = search_dirs(spec, data_dir)
    for folder in looked:
        found = spec.find(folder)
        if found is not None:
            return found
    reason = "download=False"
    if download:
        target = looked[0] if data_dir or os.environ.get("TSBD_DATA_DIR") else default_download_dir()
        try:
            return _download(spec, target)
        except Exception as err:  # no internet, a server error, a checksum mismatch
            reason = f"the torchvision download failed ({type(err).__name__}: {err})"
    raise DatasetNotFoundError(
        f"{spec.title} ({spec.name!r}) not found; looked in: {', '.join(map(str, looked))}; {reason}. "
        f"To get it: {spec.how_to_get}."
    )


def _download(spec: DatasetSpec, target: Path) -> Path:
    """Download into a scratch folder, then move it into ``target``: a failure leaves nothing behind."""
    scratch = Path(tempfile.mkdtemp(prefix=f"tsbd-{spec.name}-"))
    try:
        spec.fetch(scratch)
        if spec.find(scratch) is None:
            raise RuntimeError("the download finished but its files are not where expected")
        target.mkdir(parents=True, exist_ok=True)
        for item in scratch.iterdir():
            if not (target / item.name).exists():
                shutil.move(str(item), str(target / item.name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    found = spec.find(target)
    if found is None:
        raise RuntimeError(f"files were moved into {target} but are incomplete there")
    return found


def load(name: str, data_dir: str | Path | None = None, download: bool = True) -> tuple[ImageData, ImageData, DatasetSpec]:
    """The full train and test splits of dataset ``name`` and its spec."""
    spec = DATASETS[name]
    place = locate(spec, data_dir, download)
    train, test = (ImageData(*spec.read(place, split)) for split in (True, False))
    for split in (train, test):
        if tuple(split.x.shape[1:]) != (spec.channels, spec.size, spec.size):
            raise ValueError(f"{place}: images of shape {tuple(split.x.shape[1:])}, expected {(spec.channels, spec.size, spec.size)}")
        if split.y.numel() and not (0 <= int(split.y.min()) and int(split.y.max()) < spec.num_classes):
            raise ValueError(f"{place}: labels outside 0..{spec.num_classes - 1}")
    return train, test, spec


@dataclass(frozen=True)
class Splits:
    """What a notebook works on: the attacker's training set, the test set, the defender's clean subset.

    ``clean`` holds the *original* (never poisoned) versions of a seeded ``clean_ratio`` share of
    ``train``, in draw order, so its first part is a smaller seeded subset (RNP's 1%). As in
    BackdoorBench and the official TSBD code, it is also the "clean validation" set of the
    stopping rules.
    """

    spec: DatasetSpec
    train: ImageData
    test: ImageData
    clean: ImageData
    clean_index: torch.Tensor  # positions of ``clean`` in ``train``

    def clean_share(self, ratio: float) -> ImageData:
        """The first ``ratio`` of the training set's size from the clean subset (e.g. 0.01 for RNP)."""
        n = round(ratio * len(self.train))
        if not 0 < n <= len(self.clean):
            raise ValueError(f"clean share {ratio!r} is {n} images; the clean subset holds {len(self.clean)}")
        return self.clean.head(n)


def seeded_subset(data: ImageData, size: int | None, seed: int, purpose: str) -> ImageData:
    """A seeded random subset of ``size`` images (all of them, in order, for None)."""
    if size is None or size >= len(data):
        return data
    order = torch.randperm(len(data), generator=generator(seed, purpose))
    return data.subset(order[:size])


def clean_subset_index(n_train: int, ratio: float, seed: int) -> torch.Tensor:
    """Indices of the defender's clean share of ``n_train`` training images, in draw order."""
    if not 0 < ratio < 1:
        raise ValueError(f"clean ratio must be in (0, 1), got {ratio!r}")
    count = max(1, round(ratio * n_train))
    return torch.randperm(n_train, generator=generator(seed, "clean-subset"))[:count]


def prepare(name: str, *, train_size: int | None, test_size: int | None, clean_ratio: float,
            seed: int, data_dir: str | Path | None = None, download: bool = True) -> Splits:
    """Load ``name`` and cut the splits a profile asks for (see :func:`prepare_for`)."""
    train, test, spec = load(name, data_dir, download)
    train = seeded_subset(train, train_size, seed, "train-subset")
    test = seeded_subset(test, test_size, seed, "test-subset")
    index = clean_subset_index(len(train), clean_ratio, seed)
    return Splits(spec=spec, train=train, test=test, clean=train.subset(index), clean_index=index)


def prepare_for(profile, seed: int, data_dir: str | Path | None = None, download: bool = True) -> Splits:
    """The splits of a :class:`~tsbd_utils.config.Profile`: its dataset, sizes and clean ratio."""
    return prepare(profile.dataset, train_size=profile.train_size, test_size=profile.test_size,
                   clean_ratio=profile.clean_ratio, seed=seed, data_dir=data_dir, download=download)
