"""Shared fixtures. Tests run offline, headless and with a temporary cache shared by the session."""

from __future__ import annotations

import os

# Set before anything imports tqdm or starts a kernel: notebooks inherit the environment.
os.environ.setdefault("TQDM_DISABLE", "1")

import matplotlib

matplotlib.use("Agg")  # in this process only; papermill kernels keep their inline backend

import pytest
import torch


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One temporary artifact cache for the whole test session (models trained once, reused)."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No test reads the developer's cache or data settings by accident."""
    monkeypatch.delenv("TSBD_CACHE_DIR", raising=False)
    monkeypatch.delenv("TSBD_CACHE_READ_ONLY", raising=False)
    yield


@pytest.fixture
def tiny_images() -> tuple[torch.Tensor, torch.Tensor]:
    """64 grayscale 8x8 images of two classes that differ in brightness: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = (torch.rand(64, 1, 8, 8, generator=g) * 80 + y[:, None, None, None] * 150).to(torch.uint8)
    return x, y.to(torch.int64)
