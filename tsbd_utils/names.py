"""The dataset and model names a profile may use, known without importing the modules that build them.

``config`` checks a profile's names against these tuples, so that reading a profile loads neither the
dataset readers nor the networks. ``datasets.DATASETS`` and ``models.MODELS`` register exactly these
names (a test keeps the two in step).
"""

from __future__ import annotations

from .registry import UnknownNameError

DATASET_NAMES = ("fashion_mnist", "cifar10", "gtsrb")  # keys of datasets.DATASETS
MODEL_NAMES = ("preactresnet18",)  # keys of models.MODELS


def check_name(kind: str, name: str, allowed: tuple[str, ...]) -> str:
    """``name`` if it is one of ``allowed``, else an :class:`UnknownNameError` that lists them."""
    if not isinstance(name, str) or name not in allowed:
        raise UnknownNameError(f"unknown {kind} {name!r}; allowed: {', '.join(allowed)}")
    return name
