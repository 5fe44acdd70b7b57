"""Data loaders on small files in each dataset's own format, written here; the real Fashion-MNIST too."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tsbd_utils import data


# ------------------------------------------------------------------ helpers writing real formats
def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)


def write_fmnist(
    folder: Path, n_train: int = 12, n_test: int = 6, compress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n, dtype=np.uint8) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y, compress)
        arrays[prefix] = (x, y)
    return arrays["train"], arrays["t10k"]


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """Hide the Debian copy, $TSBD_DATA_DIR and the download folder: only what a test writes exists."""
    monkeypatch.delenv("TSBD_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "default_download_dir", lambda: tmp_path / "downloads")
    spec = data.DATASETS["fashion_mnist"]
    monkeypatch.setitem(data.DATASETS._items, "fashion_mnist", dataclasses.replace(spec, system_dirs=()))
    return tmp_path


# ------------------------------------------------------------------ containers
def test_image_data_validates_dtype_and_shape():
    with pytest.raises(ValueError, match=r"uint8 \(N, C, H, W\), got torch.float32"):
        data.ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"int64 \(2,\)"):
        data.ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    d = data.ImageData(torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1), torch.arange(4))
    assert d.subset(torch.tensor([2, 0])).y.tolist() == [2, 0]
    assert d.head(3).y.tolist() == [0, 1, 2] and len(d) == 4
    assert d.float().max().item() == pytest.approx(3 / 255)


# ------------------------------------------------------------------ Fashion-MNIST (IDX)
@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_loader_reads_idx_files(no_system_data, compress):
    folder = no_system_data / "fm"
    (x_train, y_train), (x_test, _) = write_fmnist(folder, compress=compress)
    train, test, spec = data.load("fashion_mnist", data_dir=folder, download=False)
    assert train.x.shape == (12, 1, 28, 28) and test.x.shape == (6, 1, 28, 28)
    assert torch.equal(train.x[:, 0], torch.from_numpy(x_train)) and train.y.tolist() == y_train.tolist()
    assert train.y.dtype == torch.int64 and spec.num_classes == 10


def test_fashion_mnist_is_found_through_the_environment_and_torchvision_layout(no_system_data, monkeypatch):
    write_fmnist(no_system_data / "env" / "FashionMNIST" / "raw")
    monkeypatch.setenv("TSBD_DATA_DIR", str(no_system_data / "env"))
    train, _, _ = data.load("fashion_mnist", download=False)
    assert len(train) == 12


def test_truncated_idx_file_is_an_error(no_system_data):
    folder = no_system_data / "fm"
    write_fmnist(folder, compress=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte holds .* \(truncated\?\)\. Reinstall it: .*apt-get"):
        data.load("fashion_mnist", data_dir=folder, download=False)


def test_a_damaged_gzip_file_is_named_with_how_to_reinstall(no_system_data):
    folder = no_system_data / "fm"
    write_fmnist(folder, compress=True)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])  # cut off: the gzip stream ends early
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz cannot be read: .*Reinstall it: .*apt-get"):
        data.load("fashion_mnist", data_dir=folder, download=False)


def _deflate_start(gz: bytes) -> int:
    """Where the deflate data of a gzip member starts: after its 10-byte header and the file name gzip.open stores."""
    assert gz[:2] == b"\x1f\x8b" and gz[3] & ~0x08 == 0  # only FNAME may be set
    return gz.index(b"\x00", 10) + 1 if gz[3] & 0x08 else 10


@pytest.mark.parametrize("damage", ["block type", "checksum"])
def test_a_flipped_bit_inside_a_gzip_file_is_named_with_how_to_reinstall(no_system_data, damage):
    folder = no_system_data / "fm"
    write_fmnist(folder, compress=True)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    if damage == "block type":  # the first block's type bits set to 11, which deflate reserves: zlib.error
        raw[_deflate_start(raw)] |= 0b110
        expected = r"error: Error -3 while decompressing data: invalid block type"
    else:  # a bit of the stored CRC-32: gzip's own check fails
        raw[-8] ^= 0x01
        expected = r"BadGzipFile: CRC check failed"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"train-images-idx3-ubyte.gz cannot be read: {expected}.*Reinstall it"):
        data.load("fashion_mnist", data_dir=folder, download=False)


def test_train_and_test_files_swapped_are_refused(no_system_data):
    folder = no_system_data / "fm"
    write_fmnist(folder, compress=False)
    for kind in ("images-idx3", "labels-idx1"):
        train, test = folder / f"train-{kind}-ubyte", folder / f"t10k-{kind}-ubyte"
        train_bytes = train.read_bytes()
        train.write_bytes(test.read_bytes())
        test.write_bytes(train_bytes)
    with pytest.raises(ValueError, match=r"6 training and 12 test images: .* swapped\. Reinstall it"):
        data.load("fashion_mnist", data_dir=folder, download=False)


def test_a_file_of_another_dataset_is_named_with_its_labels_and_how_to_reinstall(no_system_data):
    folder = no_system_data / "fm"
    write_fmnist(folder, compress=False)
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(12, dtype=np.uint8) + 10, compress=False)
    with pytest.raises(ValueError, match=r"Fashion-MNIST in .*fm is not the expected dataset: its training split has "
                                         r"labels 10\.\.21 outside 0\.\.9\. Reinstall it: .*apt-get"):
        data.load("fashion_mnist", data_dir=folder, download=False)
    write_fmnist(folder, compress=False)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((6, 32, 32), dtype=np.uint8), compress=False)
    with pytest.raises(ValueError, match=r"its test split has images of shape \(1, 32, 32\), expected \(1, 28, 28\)"):
        data.load("fashion_mnist", data_dir=folder, download=False)


def test_missing_dataset_says_how_to_get_it_and_touches_nothing(no_system_data):
    empty = no_system_data / "empty"
    empty.mkdir()
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load("fashion_mnist", data_dir=empty, download=False)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and str(empty) in message and "TSBD_DATA_DIR" in message
    assert list(empty.iterdir()) == []


def test_failed_download_without_internet_leaves_nothing_behind(no_system_data, monkeypatch):
    def offline(root: Path) -> None:
        (root / "FashionMNIST" / "raw").mkdir(parents=True)  # a partial download ...
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")  # ... then no network

    spec = data.DATASETS["fashion_mnist"]
    monkeypatch.setitem(data.DATASETS._items, "fashion_mnist", dataclasses.replace(spec, fetch=offline))
    target = no_system_data / "target"
    target.mkdir()
    with pytest.raises(data.DatasetNotFoundError, match=r"torchvision download failed \(URLError.*apt-get install"):
        data.load("fashion_mnist", data_dir=target, download=True)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("kind", ["missing", "file"])
@pytest.mark.parametrize("via", ["argument", "environment"])
def test_a_named_data_folder_is_never_replaced_by_another(tmp_path, monkeypatch, kind, via):
    """A data folder the user named that does not exist or is a file is an error naming it, even where the
    dataset sits elsewhere (the system place, another folder): it is never silently read from there."""
    named = tmp_path / "typo"
    if kind == "file":
        named.write_text("not a folder")
    if via == "environment":
        monkeypatch.setenv("TSBD_DATA_DIR", str(named))
        expected, argument = r"\$TSBD_DATA_DIR", None
    else:
        monkeypatch.delenv("TSBD_DATA_DIR", raising=False)
        expected, argument = "DATA_DIR", named
    problem = "does not exist" if kind == "missing" else "is a file"
    with pytest.raises(data.DatasetNotFoundError, match=rf"data folder {named} \(from {expected}.*{problem}"):
        data.load("fashion_mnist", data_dir=argument, download=True)
    assert kind == "file" or not named.exists()


def test_a_named_folder_without_the_dataset_is_the_only_place_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("TSBD_DATA_DIR", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DatasetNotFoundError, match=rf"looked in: {empty}; download=False"):
        data.load("fashion_mnist", data_dir=empty, download=False)


def test_a_partial_copy_names_the_files_it_lacks(tmp_path, monkeypatch):
    """A folder with three of Fashion-MNIST's four files (or five of CIFAR-10's six batches) is named with what
    is missing, not only "not found"."""
    monkeypatch.delenv("TSBD_DATA_DIR", raising=False)
    write_fmnist(tmp_path / "fm")
    (tmp_path / "fm" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DatasetNotFoundError, match=rf"{tmp_path}/fm holds part of it but lacks "
                                                        rf"{tmp_path}/fm/train-labels-idx1-ubyte.gz; download=False"):
        data.load("fashion_mnist", data_dir=tmp_path / "fm", download=False)
    write_cifar(tmp_path / "c10")
    (tmp_path / "c10" / "cifar-10-batches-py" / "data_batch_3").unlink()
    lacks = r"holds part of it but lacks .*cifar-10-batches-py/data_batch_3;"
    with pytest.raises(data.DatasetNotFoundError, match=lacks):
        data.load("cifar10", data_dir=tmp_path / "c10", download=False)


def test_unknown_dataset_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'; allowed: fashion_mnist, cifar10, gtsrb"):
        data.load("svhn")


# ------------------------------------------------------------------ CIFAR-10 (python pickles)
def write_cifar(folder: Path, per_batch: int = 3) -> np.ndarray:
    base = folder / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        first = images if first is None else first
        entry = {
            "batch_label": name,
            "labels": [i % 10 for i in range(per_batch)],
            "data": images.reshape(per_batch, -1),
            "filenames": [f"{i}.png" for i in range(per_batch)],
        }
        with open(base / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    with open(base / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": ["airplane"] * 10, "num_vis": 3072}, handle, protocol=2)
    return first


def test_cifar10_loader_reads_python_batches(tmp_path):
    first = write_cifar(tmp_path)
    train, test, spec = data.load("cifar10", data_dir=tmp_path, download=False)
    assert train.x.shape == (15, 3, 32, 32) and test.x.shape == (3, 3, 32, 32)
    assert torch.equal(train.x[:3], torch.from_numpy(first))  # channel-first layout preserved
    assert train.y.tolist()[:3] == [0, 1, 2] and spec.flip and spec.crop_pad == 4


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar10_loader_refuses_pickles_that_would_run_code(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": _Exploit(), "labels": []}, handle)
    with pytest.raises(ValueError, match="refusing to load posix.system"):
        data.load("cifar10", data_dir=tmp_path, download=False)


def test_cifar10_missing_folder_explains_the_layout(tmp_path, monkeypatch):
    monkeypatch.delenv("TSBD_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "default_download_dir", lambda: tmp_path / "downloads")
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-batches-py"):
        data.load("cifar10", data_dir=tmp_path, download=False)


# ------------------------------------------------------------------ GTSRB (PPM + CSV)
def test_gtsrb_loader_reads_ppm_folders_and_resizes(tmp_path):
    base = tmp_path / "gtsrb" / "GTSRB"
    rng = np.random.default_rng(2)
    for cls in (0, 1, 2):
        folder = base / "Training" / f"{cls:05d}"
        folder.mkdir(parents=True)
        for i in range(2):
            size = (30 + 7 * i, 41)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"00000_{i:05d}.ppm")
    test_dir = base / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, cls in enumerate((2, 0, 1, 42)):
        Image.fromarray(rng.integers(0, 256, (50, 45, 3), dtype=np.uint8)).save(test_dir / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;45;50;5;5;40;45;{cls}")
    (tmp_path / "gtsrb" / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    train, test, spec = data.load("gtsrb", data_dir=tmp_path, download=False)
    assert train.x.shape == (6, 3, 32, 32) and train.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert test.x.shape == (4, 3, 32, 32) and test.y.tolist() == [2, 0, 1, 42]
    assert spec.num_classes == 43 and len(spec.classes) == 43 and not spec.flip


# ------------------------------------------------------------------ splits
def test_prepare_draws_seeded_subsets_and_a_clean_share(no_system_data):
    folder = no_system_data / "fm"
    write_fmnist(folder, n_train=200, n_test=50)
    a = data.prepare("fashion_mnist", train_size=100, test_size=20, clean_ratio=0.1, seed=0, data_dir=folder)
    b = data.prepare("fashion_mnist", train_size=100, test_size=20, clean_ratio=0.1, seed=0, data_dir=folder)
    c = data.prepare("fashion_mnist", train_size=100, test_size=20, clean_ratio=0.1, seed=1, data_dir=folder)
    assert (len(a.train), len(a.test), len(a.clean)) == (100, 20, 10)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.clean_index, b.clean_index)
    assert not torch.equal(a.clean_index, c.clean_index)
    assert torch.equal(a.clean.x, a.train.x[a.clean_index]) and len(set(a.clean_index.tolist())) == 10
    assert torch.equal(a.clean_share(0.05).x, a.clean.x[:5])  # RNP's share is the head of the clean subset
    with pytest.raises(ValueError, match="clean share 0.5 is 50 images; the clean subset holds 10"):
        a.clean_share(0.5)
    assert a.source == folder  # the folder read, which every notebook's results record


def test_results_record_the_data_folder_read(no_system_data):
    from tsbd_utils import session

    folder = no_system_data / "fm"
    write_fmnist(folder, n_train=200, n_test=50)
    s = session.start("00", profile="smoke", cache_dir=str(no_system_data / "c"), figures_dir=str(no_system_data),
                      run_dir=str(no_system_data / "r"), data_dir=str(folder))
    assert s.provenance()["data_folder"] is None  # nothing read yet
    assert len(s.splits.train) > 0  # reading the splits loads the data
    assert s.provenance()["data_folder"] == str(folder)


def test_real_fashion_mnist_is_installed_and_complete():
    """`make test` installs the Debian package; without it this fails with instructions."""
    train, test, spec = data.load("fashion_mnist", download=False)
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.y).tolist() == [6000] * 10 and torch.bincount(test.y).tolist() == [1000] * 10
    assert spec.classes[9] == "Ankle boot"
