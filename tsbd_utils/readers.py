"""Readers for the datasets' own file formats, returning uint8 NCHW tensors and int64 labels.

Fashion-MNIST ships as IDX files (gzipped in the Debian package and in torchvision's folder),
CIFAR-10 as pickled Python batches, GTSRB as PPM images with CSV ground truth. Each reader checks
the format and fails with a message naming the file, never returning half-read data.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as err:  # a damaged or cut-off gzip stream (a flipped bit: zlib.error)
        raise ValueError(f"{path} cannot be read: {type(err).__name__}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"{path} holds {len(raw)} bytes, its header promises {expected} (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_pair(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, H, W) uint8 and labels (N,) int64 from an IDX image/label file pair."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{images} and {labels} do not form an image/label pair: {x.shape} vs {y.shape}")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing that could run code.

    CIFAR-10's batches are pickles; a file planted in a data folder must not execute anything.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 rebuild bytes with it
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 python batch: images (N, 3, 32, 32) uint8, labels (N,) int64."""
    with open(path, "rb") as handle:
        try:
            entry = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise ValueError(f"{path} is not a readable CIFAR batch: {err}") from err
    if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
        raise ValueError(f"{path} is not a CIFAR-10 batch (expected a dict with 'data' and 'labels')")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} and labels {labels.shape} do not match CIFAR-10")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def read_cifar10(folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The train (data_batch_1..5) or test (test_batch) split of a ``cifar-10-batches-py`` folder."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    parts = [read_cifar_batch(folder / name) for name in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def read_gtsrb(root: Path, train: bool, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """GTSRB through torchvision's reader, each image resized to size x size (as BackdoorBench)."""
    from torchvision import datasets, transforms

    resize = transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])
    dataset = datasets.GTSRB(str(root), split="train" if train else "test", transform=resize)
    if len(dataset) == 0:
        raise ValueError(f"{root}: the GTSRB {'train' if train else 'test'} split has no images")
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
