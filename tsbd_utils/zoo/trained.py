"""The models every notebook shares, trained once and then loaded from the cache.

Notebook 00 trains the clean model, notebook 01 the backdoored ones, notebook 02 the unlearned
ones; later notebooks find them by asking with the same session settings (keys: :mod:`.keys`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..attacks import ATTACKS, Attack, AttackConfig, AttackContext
from ..cache import Check, model_state
from ..models import count_parameters, model_for
from ..session import Session
from ..training import History, channels_last_safe, train
from ..unlearning import UNLEARN_MODES, UnlearnConfig, Unlearned, clean_unlearn, non_finite, poison_unlearn
from .keys import backdoor_fields, clean_fields, defender_fields, model_fields, unlearn_config


@dataclass
class Trained:
    """A model from the zoo, its training history and the provenance stored beside it in the cache."""

    model: nn.Module
    history: History
    info: dict[str, Any]  # device, train_seconds, images_per_s, epoch_seconds, created (from when it was trained)


@dataclass
class Backdoored(Trained):
    """A backdoored model and the attack that planted it (prepared: ``attack.apply`` works)."""

    attack: Attack | None = None
    poisoned: int = 0  # poisoned training images (0 for attacks that poison on the fly)


@dataclass
class Defended:
    """A defended model (:mod:`.defended`), the defense's record (per-epoch curves included) and its provenance."""

    model: nn.Module
    record: dict[str, Any]
    info: dict[str, Any]  # device, compute_seconds, created
    fields: dict[str, Any] | None = None  # its cache key, for evaluate_cached (None: not cached)


def on_device(session: Session, model: nn.Module) -> nn.Module:
    """A model from the cache on the session's device, in the memory format it was trained in."""
    if (
        session.profile.train.channels_last
        and session.device.type in ("cpu", "cuda")
        and channels_last_safe(model, session.device)
    ):
        model = model.to(memory_format=torch.channels_last)  # as trained; about 1.2x faster on the CPU
    return model.to(session.device)


def cached_model(
    session: Session,
    fields: dict[str, Any],
    fit: Callable[[nn.Module], dict[str, Any]],
    *,
    seed: int | None = None,
    attachments: dict[str, Any] | None = None,
    info: Callable[[], dict[str, Any]] | None = None,
    check: Check | None = None,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The profile's model (initialised with ``seed``, default the session's) whose key is ``fields``:
    loaded from the cache, or ``fit(model) -> extras`` on a miss (or when ``check`` finds the stored entry
    stale: :meth:`~tsbd_utils.cache.Cache.load`). Returns it on the session's device."""
    model = model_for(session.profile, session.splits.spec, session.seed if seed is None else seed)
    base = {"device": str(session.device), "threads": session.threads}
    model, extras, stored = session.cache.get_or_train(
        "model",
        fields,
        model,
        fit,
        attachments=attachments,
        info=lambda: {**base, **(info() if info else {})},
        check=check,
    )
    return on_device(session, model), extras, stored


def _train_cached(session: Session, fields: dict[str, Any], train_one, attachments=None, seed=None, check=None):
    """A model trained with ``train_one(model) -> (history, extras)`` through the cache."""
    timing: dict[str, Any] = {}

    def fit(m: nn.Module) -> dict[str, Any]:
        history, extras = train_one(m)
        timing.update(history.timing())
        return {"history": history.to_dict(), "parameters": count_parameters(m), **extras}

    return cached_model(session, fields, fit, seed=seed, attachments=attachments, info=lambda: timing, check=check)


def clean_model(session: Session, progress: bool = True, train_seed: int | None = None) -> Trained:
    """The profile's clean model (no attack), trained once and then loaded from the cache.

    ``train_seed`` (another value than the session's seed) trains a second, independent clean model
    on the same images, with another initialisation and batch order: a control that tells a property
    of clean models from the chance of one training run (notebook 01's trigger floor uses it).
    """
    if train_seed is not None and (not isinstance(train_seed, int) or isinstance(train_seed, bool) or train_seed < 0):
        raise ValueError(f"train_seed must be None or an int >= 0, got {train_seed!r}")
    splits = session.splits
    seed = session.seed if train_seed is None else train_seed

    def train_one(m: nn.Module):
        history = train(
            m,
            splits.train,
            session.profile.train,
            spec=splits.spec,
            seed=seed,
            device=session.device,
            progress=progress,
            desc="clean model" if seed == session.seed else f"clean model (training seed {seed})",
        )
        return history, {}

    model, extras, info = _train_cached(session, clean_fields(session, seed), train_one, seed=seed)
    return Trained(model, History.from_dict(extras["history"]), info)


def attack_context(session: Session, progress: bool = True) -> AttackContext:
    """What an attack's ``prepare`` may use under ``session``; the clean model is loaded only if asked for."""
    return AttackContext(
        spec=session.splits.spec,
        train=session.splits.train,
        profile=session.profile,
        seed=session.seed,
        device=session.device,
        cache=session.cache,
        key=model_fields(session, "resource"),
        clean_model=lambda: clean_model(session, progress).model,
    )


def backdoored_model(
    session: Session, name: str, config: AttackConfig | None = None, progress: bool = True
) -> Backdoored:
    """The model backdoored by attack ``name`` (its config, else BackdoorBench's defaults); cached."""
    attack = ATTACKS[name](config)
    splits = session.splits

    def train_one(m: nn.Module):
        attack.prepare(attack_context(session, progress))
        poisoned, index = attack.poison_train(splits.train, session.seed)
        history = train(
            m,
            poisoned,
            attack.train_config(session.profile),
            spec=splits.spec,
            seed=session.seed,
            device=session.device,
            batch_transform=attack.batch_transform(),
            progress=progress,
            desc=f"{attack.title} model",
        )
        return history, {"poisoned": len(index)}

    fields = backdoor_fields(session, name, attack.config)
    model, extras, info = _train_cached(session, fields, train_one, attachments={"attack": attack})
    attack.device = session.device  # also after a cache hit, where prepare() did not run
    return Backdoored(model, History.from_dict(extras["history"]), info, attack=attack, poisoned=extras["poisoned"])


def unlearned_model(
    session: Session,
    name: str,
    mode: str = "clean",
    config: UnlearnConfig | None = None,
    progress: bool = False,
    *,
    attack_config: AttackConfig | None = None,
) -> Unlearned:
    """The backdoored model of attack ``name`` after clean or poison unlearning; cached.

    ``mode="clean"``: TSBD's clean unlearning on the defender's clean subset (accuracy <= 10%).
    ``mode="poison"``: Observation 1's ascent on the backdoor test images with the target label
    (ASR <= 5%). ``config`` defaults to the profile's (:func:`.keys.unlearn_config`);
    ``attack_config`` picks the backdoored model (:func:`backdoored_model`).
    """
    if mode not in UNLEARN_MODES:
        raise ValueError(f"unknown unlearning mode {mode!r}; allowed: {', '.join(UNLEARN_MODES)}")
    bd = backdoored_model(session, name, attack_config, progress=progress)
    config = config or unlearn_config(session.profile, mode)
    splits, p = session.splits, session.profile

    def train_one(m: nn.Module):
        common = dict(
            spec=splits.spec,
            seed=session.seed,
            device=session.device,
            config=config,
            eval_batch_size=p.eval_batch_size,
            progress=progress,
        )
        if mode == "clean":
            run = clean_unlearn(bd.model, splits.clean, **common)
        else:
            x_bd, _ = bd.attack.backdoor_test(splits.test)
            run = poison_unlearn(bd.model, x_bd, bd.attack.config.target, **common)
        m.load_state_dict(run.model.state_dict())
        return run.history, {"stopped": run.history.stopped, "diverged": run.diverged}

    # Poison unlearning trains on the backdoor *test* images, so a test subset is part of its key (absent
    # for the whole split, which keeps the keys of the cached quick and paper models).
    test_key = {"test_size": p.test_size} if mode == "poison" and p.test_size is not None else {}
    clean_key = defender_fields(session) if mode == "clean" else {}
    fields = model_fields(
        session,
        "unlearned",
        attack=name,
        attack_config=bd.attack.config,
        mode=mode,
        unlearn=config,
        **test_key,
        **clean_key,
    )
    model, extras, info = _train_cached(session, fields, train_one, check=_finite_weights)
    history = History.from_dict(extras["history"])
    history.stopped = extras["stopped"]
    history.seconds = list(info.get("epoch_seconds", []))
    # Entries from before divergence was recorded passed _finite_weights, so their run never diverged.
    return Unlearned(model, history, extras.get("diverged", False))


def _finite_weights(value: dict[str, Any]) -> str | None:
    """Why a cached unlearned model is unusable: non-finite weights, which an unlearning that ran on after
    diverging left (it now stops at the last finite epoch and says so), else None."""
    bad = non_finite(model_state(value))
    return f"non-finite weights in {', '.join(bad[:3])}" if bad else None


def unlearning_outcome(run: Unlearned) -> dict[str, Any]:
    """Key fields that a model built from the unlearning ``run`` (:func:`unlearned_model`) adds:
    ``{"unlearning": "diverged"}`` when it diverged (it stopped at its last finite epoch), else nothing, so that
    every other key stays as it was and an entry built from an older, non-finite run is never read again."""
    return {"unlearning": "diverged"} if run.diverged else {}
