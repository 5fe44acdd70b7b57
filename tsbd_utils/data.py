"""Datasets as in-memory uint8 tensors, and the splits every notebook works on.

Three datasets: Fashion-MNIST (the offline default: the Debian package ``dataset-fashion-mnist``),
CIFAR-10 and GTSRB (through torchvision: a download, or a folder you already have). A folder you
name (``data_dir``, else ``$TSBD_DATA_DIR``) is the only place looked in and downloaded into; it must
exist. Without one, the dataset is looked for in the system location (Debian's), then in the
download folder, and only then downloaded. A missing dataset is an error that says how to get it; the
suite never substitutes synthetic data.

Images stay uint8 (N, C, H, W) at rest and become float in [0, 1] one batch at a time; the
model normalizes them itself (see models.py), so everything outside the model lives in pixel space.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .datasets import DATASETS, DatasetSpec
from .paths import checked_path
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


# ---------------------------------------------------------------- finding and loading
def default_download_dir() -> Path:
    """Where downloads go when neither ``data_dir`` nor ``$TSBD_DATA_DIR`` is set."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tsbd" / "data"


def explicit_dir(data_dir: str | Path | None = None) -> tuple[Path, str] | None:
    """The data folder a user named, and where it was named: ``data_dir`` first, then ``$TSBD_DATA_DIR``."""
    named = checked_path("DATA_DIR", data_dir)
    if named is not None:
        return named, "DATA_DIR / --data-dir"
    if os.environ.get("TSBD_DATA_DIR"):  # set and not empty
        return checked_path("$TSBD_DATA_DIR", os.environ["TSBD_DATA_DIR"]), "$TSBD_DATA_DIR"
    return None


def checked_named_dir(data_dir: str | Path | None = None) -> Path | None:
    """The data folder a user named (see :func:`explicit_dir`), None if none; one that does not exist or is a file
    is an error naming it and where it was named, never replaced by another place."""
    named = explicit_dir(data_dir)
    if named is None:
        return None
    folder, source = named
    if not folder.exists():
        raise DatasetNotFoundError(f"the data folder {folder} (from {source}) does not exist; create it, or "
                                   "name the folder that holds the dataset")
    if not folder.is_dir():
        raise DatasetNotFoundError(f"the data folder {folder} (from {source}) is a file, not a folder")
    return folder


def search_dirs(spec: DatasetSpec, data_dir: str | Path | None = None) -> list[Path]:
    """The folders looked in: only the one a user named (``data_dir``, else ``$TSBD_DATA_DIR``), never replaced by
    another; without one, the system places, then the download folder."""
    named = explicit_dir(data_dir)
    if named is not None:
        return [named[0]]
    return [Path(d) for d in spec.system_dirs] + [default_download_dir()]


def locate(spec: DatasetSpec, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding ``spec``'s files, downloading them if allowed and nowhere to be found.

    A folder the user named must exist and be a folder; the dataset is looked for (and downloaded) there only.
    """
    named = checked_named_dir(data_dir)
    looked = search_dirs(spec, data_dir)
    for folder in looked:
        found = spec.find(folder)
        if found is not None:
            return found
    partial = [f"{folder} holds part of it but lacks {', '.join(lacks)}" for folder in looked
               if (lacks := spec.lacks(folder))]
    reason = "download=False"
    if download:
        target = looked[0] if named is not None else default_download_dir()
        try:
            return _download(spec, target)
        except Exception as err:  # no internet, a server error, a checksum mismatch
            reason = f"the torchvision download failed ({type(err).__name__}: {' '.join(str(err).split())})"
    raise DatasetNotFoundError(
        f"{spec.title} ({spec.name!r}) not found; looked in: {', '.join(map(str, looked))}; "
        + "".join(f"{p}; " for p in partial) + f"{reason}. "
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


def load(
    name: str, data_dir: str | Path | None = None, download: bool = True
) -> tuple[ImageData, ImageData, DatasetSpec]:
    """The full train and test splits of dataset ``name`` and its spec."""
    spec = DATASETS[name]
    return (*read_splits(spec, locate(spec, data_dir, download)), spec)


def read_splits(spec: DatasetSpec, place: Path) -> tuple[ImageData, ImageData]:
    """The full train and test splits of ``spec`` from the folder ``place`` (found by :func:`locate`), checked."""
    try:
        train, test = (ImageData(*spec.read(place, split)) for split in (True, False))
    except ValueError as err:  # the readers name the damaged file
        raise ValueError(f"{spec.title} in {place} is damaged: {err}. Reinstall it: {spec.how_to_get}.") from err
    for what, split in (("training", train), ("test", test)):
        problem = None
        if tuple(split.x.shape[1:]) != (spec.channels, spec.size, spec.size):
            problem = f"images of shape {tuple(split.x.shape[1:])}, expected {(spec.channels, spec.size, spec.size)}"
        elif split.y.numel() and not (0 <= int(split.y.min()) and int(split.y.max()) < spec.num_classes):
            problem = f"labels {int(split.y.min())}..{int(split.y.max())} outside 0..{spec.num_classes - 1}"
        if problem:
            raise ValueError(
                f"{spec.title} in {place} is not the expected dataset: its {what} split has {problem}. "
                f"Reinstall it: {spec.how_to_get}."
            )
    if len(train) < len(test):  # every dataset here has more training than test images
        raise ValueError(
            f"{spec.title} in {place} has {len(train)} training and {len(test)} test images: fewer training than "
            f"test images, as if the train and test files were swapped. Reinstall it: {spec.how_to_get}."
        )
    return train, test


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
    source: Path | None = None  # the folder the dataset was read from (recorded in every notebook's results)

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


def prepare(
    name: str,
    *,
    train_size: int | None,
    test_size: int | None,
    clean_ratio: float,
    seed: int,
    data_dir: str | Path | None = None,
    download: bool = True,
) -> Splits:
    """Load ``name`` and cut the splits a profile asks for (see :func:`prepare_for`)."""
    spec = DATASETS[name]
    source = locate(spec, data_dir, download)
    train, test = read_splits(spec, source)
    train = seeded_subset(train, train_size, seed, "train-subset")
    test = seeded_subset(test, test_size, seed, "test-subset")
    index = clean_subset_index(len(train), clean_ratio, seed)
    return Splits(spec=spec, train=train, test=test, clean=train.subset(index), clean_index=index, source=source)


def prepare_for(profile, seed: int, data_dir: str | Path | None = None, download: bool = True) -> Splits:
    """The splits of a :class:`~tsbd_utils.config.Profile`: its dataset, sizes and clean ratio."""
    return prepare(
        profile.dataset,
        train_size=profile.train_size,
        test_size=profile.test_size,
        clean_ratio=profile.clean_ratio,
        seed=seed,
        data_dir=data_dir,
        download=download,
    )
