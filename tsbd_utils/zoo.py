"""The models every notebook shares, trained once and then loaded from the cache.

A model's cache key is everything that determines it: dataset, training-set size, architecture,
width, training recipe and seed. Notebook 00 trains the clean model; notebook 01 and later find it
by asking with the same session settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import metrics
from .models import count_parameters, model_for
from .session import Session
from .training import History, train


def model_fields(session: Session, role: str, **extra: Any) -> dict[str, Any]:
    """Cache-key fields of a model trained from scratch under ``session`` (plus ``extra``)."""
    p = session.profile
    return {
        "role": role,
        "dataset": p.dataset,
        "train_size": p.train_size,
        "model": p.model,
        "width": p.width,
        "train": p.train,
        "seed": session.seed,
        **extra,
    }


@dataclass
class Trained:
    """A model from the zoo, its training history and the provenance stored beside it in the cache."""

    model: nn.Module
    history: History
    info: dict[str, Any]  # device, train_seconds, images_per_s, epoch_seconds, created (from when it was trained)


def clean_model(session: Session, progress: bool = True) -> Trained:
    """The profile's clean model (no attack), trained once and then loaded from the cache."""
    splits = session.splits
    model = model_for(session.profile, splits.spec, session.seed)
    timing: dict[str, Any] = {}

    def fit(m: nn.Module) -> dict[str, Any]:
        history = train(
            m,
            splits.train,
            session.profile.train,
            spec=splits.spec,
            seed=session.seed,
            device=session.device,
            progress=progress,
            desc="clean model",
        )
        timing.update(history.timing())
        return {"history": history.to_dict(), "parameters": count_parameters(m)}

    model, extras, info = session.cache.get_or_train(
        "model",
        model_fields(session, "clean"),
        model,
        fit,
        info=lambda: {"device": str(session.device), "threads": session.threads, **timing},
    )
    return Trained(model.to(session.device), History.from_dict(extras["history"]), info)


def test_accuracy(session: Session, model: nn.Module) -> tuple[float, torch.Tensor]:
    """Clean test accuracy and the predictions behind it."""
    test = session.splits.test
    pred = metrics.predict(model, test.x, session.profile.eval_batch_size, session.device)
    return metrics.accuracy(pred, test.y), pred
