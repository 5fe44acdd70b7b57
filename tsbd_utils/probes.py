"""Probing a notebook's models for the background shortcut: cached tables over a fixed image sample.

Notebook 05 asks every model (clean, backdoored, defended) two questions on the same seeded sample
of non-target evaluation images: how often do trigger-free perturbations (:data:`shortcut.PERTURBATIONS`)
send them to the target class, and how often does each attack's trigger do so (the cross-trigger
table: the trigger of attack j on the model of attack i)? Each answer is cached under the model's
own cache key, so a rerun only reads them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import metrics
from .attacks import Attack
from .data import ImageData, seeded_subset
from .session import Session
from .shortcut import PERTURBATIONS, target_rate
from .zoo import evaluation_set

PROBE_IMAGES = 1000  # non-target images per probe: a standard error of at most 1.6 points per rate


def probe_images(session: Session, target: int = 0, size: int = PROBE_IMAGES) -> ImageData:
    """A seeded sample of ``size`` non-target images of the evaluation set (uint8)."""
    test = evaluation_set(session)
    keep = test.y != target
    return seeded_subset(ImageData(test.x[keep], test.y[keep]), size, session.seed, "shortcut-probe")


def _probe_key(session: Session, fields: dict[str, Any], what: str, extra: Any, size: int) -> dict[str, Any]:
    p = session.profile
    return {
        "probe": what,
        "model": fields,
        "extra": extra,
        "size": size,
        "test_size": p.test_size,
        "eval_size": p.eval_size,
    }


def generic_rates(
    session: Session, fields: dict[str, Any], model: nn.Module, target: int = 0, size: int = PROBE_IMAGES
) -> dict[str, float]:
    """Share of the probe images sent to ``target`` unperturbed ("none") and after each generic perturbation.

    ``fields`` is the model's cache key (it keys this table too).
    """
    images = probe_images(session, target, size).x

    def compute() -> dict[str, float]:
        rates = {"none": target_rate(model, images, None, target, device=session.device)}
        for name, perturb in PERTURBATIONS.items():
            rates[name] = target_rate(model, images, perturb, target, seed=session.seed, device=session.device)
        return rates

    key = _probe_key(session, fields, "generic", {"target": target, "perturbations": list(PERTURBATIONS)}, size)
    return session.cache.get_or_compute("evaluation", key, compute)


def cross_trigger_rates(
    session: Session,
    fields: dict[str, Any],
    model: nn.Module,
    triggers: dict[str, tuple[dict[str, Any], Attack]],
    size: int = PROBE_IMAGES,
) -> dict[str, float]:
    """The ASR of every trigger of ``triggers`` (name -> (its backdoored model's cache key, the attack)) on ``model``.

    The attack's own trigger gives its ASR on the sample; the others say whether the model also
    answers triggers it was never trained on.
    """
    targets = {a.config.target for _, a in triggers.values()}
    if len(targets) != 1:
        raise ValueError(f"the triggers must share one target class, got {sorted(targets)}")
    target = targets.pop()
    images = probe_images(session, target, size).x

    def compute() -> dict[str, float]:
        out = {}
        for name, (_, attack) in triggers.items():
            pred = metrics.predict(model, attack.apply_uint8(images), session.profile.eval_batch_size, session.device)
            out[name] = metrics.attack_success_rate(pred, target)
        return out

    key = _probe_key(session, fields, "cross-trigger", {n: f for n, (f, _) in triggers.items()}, size)
    return session.cache.get_or_compute("evaluation", key, compute)


def stage1_share_by_layer(record: dict[str, Any], layers: list[str], model: nn.Module) -> dict[str, float]:
    """From a TSBD record: the share of each layer's neurons that stage 1 reinitialized."""
    modules = dict(model.named_modules())
    chosen = record["stage1"]["layers"]
    return {name: chosen.get(name, {}).get("neurons", 0) / modules[name].weight.shape[0] for name in layers}
