"""Explicit randomness: every random draw takes a generator derived from (seed, purpose).

Deriving one independent stream per purpose ("train-subset", "clean-subset", "epoch-order", ...)
means adding a new random step never shifts the numbers of an existing one, and no library
function touches the global RNG.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch

SEED_MAX = 2**32 - 1  # a run's seed: 32 bits, as NumPy's; torch takes up to 2**64 - 1, so seed + k stays valid


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` if it is an int in 0..:data:`SEED_MAX`, else an error naming ``name``, the value and the range."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{name} must be an int in 0..{SEED_MAX}, got {seed!r}")
    return seed


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose``, stable across runs, machines and Python versions."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded for ``purpose``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, purpose))


@contextlib.contextmanager
def seeded(seed: int, purpose: str) -> Iterator[None]:
    """Run a block (such as building a model) under a seeded global RNG, then restore it.

    Module initialisers draw from the global RNG and take no generator; forking keeps the
    caller's RNG state as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, purpose))
        yield
