"""The models every notebook shares, trained once and then loaded from the cache.

A model's cache key is everything that determines it: dataset, training-set size, architecture,
width, training recipe, seed and, for a backdoored model, the attack and its config. Notebook 00
trains the clean model; notebook 01 the backdoored ones; later notebooks find them by asking with
the same session settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import metrics
from .attacks import ATTACKS, Attack, AttackConfig, AttackContext
from .config import Profile
from .data import ImageData, seeded_subset
from .defenses import DEFENSES, OracleData, TSBDConfig, config_for
from .models import count_parameters, model_for
from .observations import UNLEARN_MODES, UnlearnConfig, Unlearned, clean_unlearn, poison_unlearn
from .session import Session
from .shortcut import PhotometricConfig, PhotometricLift
from .training import History, channels_last_safe, train



def unlearn_config(profile: Profile, mode: str = "clean") -> UnlearnConfig:
    """The profile's unlearning (:meth:`UnlearnConfig.for_profile`: ``Profile.unlearn_lr`` and ``unlearn_cap``)."""
    return UnlearnConfig.for_profile(profile, mode)


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


@dataclass
class Backdoored(Trained):
    """A backdoored model and the attack that planted it (prepared: ``attack.apply`` works)."""

    attack: Attack | None = None
    poisoned: int = 0  # poisoned training images (0 for attacks that poison on the fly)


def _train_cached(
    session: Session,
    fields: dict[str, Any],
    train_one,
    attachments: dict[str, Any] | None = None,
    seed: int | None = None,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Build the profile's model (initialised with ``seed``, default the session's) and train it with
    ``train_one(model) -> (history, extras)``, through the cache."""
    splits = session.splits
    model = model_for(session.profile, splits.spec, session.seed if seed is None else seed)
    timing: dict[str, Any] = {}

    def fit(m: nn.Module) -> dict[str, Any]:
        history, extras = train_one(m)
        timing.update(history.timing())
        return {"history": history.to_dict(), "parameters": count_parameters(m), **extras}

    model, extras, info = session.cache.get_or_train(
        "model",
        fields,
        model,
        fit,
        attachments=attachments,
        info=lambda: {"device": str(session.device), "threads": session.threads, **timing},
    )
    return _on_device(session, model), extras, info


def _on_device(session: Session, model: nn.Module) -> nn.Module:
    """A model from the cache on the session's device, in the memory format it was trained in."""
    if (
        session.profile.train.channels_last
        and session.device.type in ("cpu", "cuda")
        and channels_last_safe(model, session.device)
    ):
        model = model.to(memory_format=torch.channels_last)  # as trained; about 1.2x faster on the CPU
    return model.to(session.device)


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


def clean_fields(session: Session, train_seed: int | None = None) -> dict[str, Any]:
    """The cache key of :func:`clean_model`: the session's own keeps its key, a second one adds its training seed."""
    seed = session.seed if train_seed is None else train_seed
    return model_fields(session, "clean", **({} if seed == session.seed else {"train_seed": seed}))


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

    fields = model_fields(session, "backdoor", attack=name, attack_config=attack.config)
    model, extras, info = _train_cached(session, fields, train_one, attachments={"attack": attack})
    attack.device = session.device  # also after a cache hit, where prepare() did not run
    return Backdoored(model, History.from_dict(extras["history"]), info, attack=attack, poisoned=extras["poisoned"])


def evaluation_set(session: Session) -> ImageData:
    """The test images behind every reported ACC / ASR / RA: a seeded subset of ``profile.eval_size``
    images of the test split (the whole split when it is None, as in the paper profile)."""
    return seeded_subset(session.splits.test, session.profile.eval_size, session.seed, "eval-subset")


def test_accuracy(session: Session, model: nn.Module) -> tuple[float, torch.Tensor]:
    """Clean accuracy on :func:`evaluation_set` and the predictions behind it (aligned with its labels)."""
    test = evaluation_set(session)
    pred = metrics.predict(model, test.x, session.profile.eval_batch_size, session.device)
    return metrics.accuracy(pred, test.y), pred


def evaluate(session: Session, model: nn.Module, attack: Attack) -> dict[str, float]:
    """ACC on the clean test images; ASR and RA on the attack's backdoor test images (non-target ones).

    Both come from :func:`evaluation_set`. Also the clean accuracy on the target class alone, which
    clean-label attacks (SIG) lower.
    """
    acc, pred = test_accuracy(session, model)
    test, target = evaluation_set(session), attack.config.target
    x_bd, y_true = attack.backdoor_test(test)
    pred_bd = metrics.predict(model, x_bd, session.profile.eval_batch_size, session.device)
    on_target = test.y == target
    return {
        "acc": acc,
        "asr": metrics.attack_success_rate(pred_bd, target),
        "ra": metrics.robust_accuracy(pred_bd, y_true),
        "target_class_acc": metrics.accuracy(pred[on_target], test.y[on_target]),
    }


def trigger_floor(session: Session, name: str, train_seed: int | None = None) -> dict[str, float]:
    """:func:`evaluate` of a *clean* model (no backdoor) on attack ``name``'s triggered test images; cached.

    Its ASR is the trigger's floor: the share of triggered images a model that never saw the trigger
    already sends to the target. No defense can be expected to push the ASR below it. ``train_seed``
    picks the second clean model of :func:`clean_model`.
    """
    clean = clean_model(session, progress=False, train_seed=train_seed)
    bd = backdoored_model(session, name, progress=False)
    trigger = model_fields(session, "backdoor", attack=name, attack_config=bd.attack.config)
    return evaluate_cached(session, {**clean_fields(session, train_seed), "trigger": trigger}, clean.model, bd.attack)


def unlearned_model(
    session: Session, name: str, mode: str = "clean", config: UnlearnConfig | None = None, progress: bool = False
) -> Unlearned:
    """The backdoored model of attack ``name`` after clean or poison unlearning; cached.

    ``mode="clean"``: TSBD's clean unlearning on the defender's clean subset (accuracy <= 10%).
    ``mode="poison"``: Observation 1's ascent on the backdoor test images with the target label
    (ASR <= 5%). ``config`` defaults to the profile's (:func:`unlearn_config`).
    """
    if mode not in UNLEARN_MODES:
        raise ValueError(f"unknown unlearning mode {mode!r}; allowed: {', '.join(UNLEARN_MODES)}")
    bd = backdoored_model(session, name, progress=progress)
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
        return run.history, {"stopped": run.history.stopped}

    # Poison unlearning trains on the backdoor *test* images, so a test subset is part of its key (absent
    # for the whole split, which keeps the keys of the cached quick and paper models).
    test_key = {"test_size": p.test_size} if mode == "poison" and p.test_size is not None else {}
    fields = model_fields(
        session, "unlearned", attack=name, attack_config=bd.attack.config, mode=mode, unlearn=config, **test_key
    )
    model, extras, info = _train_cached(session, fields, train_one)
    history = History.from_dict(extras["history"])
    history.stopped = extras["stopped"]
    history.seconds = list(info.get("epoch_seconds", []))
    return Unlearned(model, history)


@dataclass
class Defended:
    """A defended model, the defense's record (per-epoch curves included) and its provenance."""

    model: nn.Module
    record: dict[str, Any]
    info: dict[str, Any]  # device, compute_seconds, created
    fields: dict[str, Any] | None = None  # its cache key, for evaluate_cached


def curve_eval(session: Session, attack: Attack, size: int):
    """An ``eval_fn`` for per-epoch curves: ACC and ASR on seeded subsets of ``size`` images each.

    Subsets keep the curves cheap (two small forward passes per epoch); final numbers always come
    from :func:`evaluate` on :func:`evaluation_set`.
    """
    test = session.splits.test
    x_bd, _ = attack.backdoor_test(test)
    g = torch.Generator().manual_seed(session.seed)
    pick_test = torch.randperm(len(test), generator=g)[:size]
    pick_bd = torch.randperm(len(x_bd), generator=g)[:size]
    x_test, y_test, x_bd = test.x[pick_test], test.y[pick_test], x_bd[pick_bd]
    batch, device, target = session.profile.eval_batch_size, session.device, attack.config.target

    def eval_fn(model: nn.Module) -> dict[str, float]:
        return {
            "acc": metrics.accuracy(metrics.predict(model, x_test, batch, device), y_test),
            "asr": metrics.attack_success_rate(metrics.predict(model, x_bd, batch, device), target),
        }

    return eval_fn


def tsbd_model(
    session: Session,
    name: str,
    config: TSBDConfig | None = None,
    curve_size: int = 0,
    ranking: str = "clean",
    photometric: PhotometricConfig | None = None,
    progress: bool = False,
) -> Defended:
    """TSBD (or, with ``alpha=0``, stage 1 + vanilla fine-tuning) on attack ``name``'s model; cached.

    Stage 1 reuses the cached unlearning of :func:`unlearned_model`: ``ranking="clean"`` is TSBD;
    ``ranking="poison"`` ranks neurons by *poison* unlearning instead, an oracle no defender has
    (it needs the trigger), used only to ask whether a failure comes from the ranking. ``curve_size
    > 0`` records ACC / ASR on subsets of that many images after every stage-2 epoch (in the record).
    ``photometric`` fine-tunes with :class:`~tsbd_utils.shortcut.PhotometricLift` on the clean images:
    a labelled variant that tests the background-shortcut explanation, not TSBD as published.
    """
    if ranking not in UNLEARN_MODES:
        raise ValueError(f"unknown ranking {ranking!r}; allowed: {', '.join(UNLEARN_MODES)}")
    config = config or TSBDConfig.for_profile(session.profile)
    bd = backdoored_model(session, name, progress=progress)
    splits = session.splits

    def run():
        # Only on a cache miss: a cached TSBD model needs neither the unlearned model nor a run.
        unlearn = config.unlearn if ranking == "clean" else unlearn_config(session.profile, "poison")
        unlearned = unlearned_model(session, name, ranking, unlearn, progress=progress)
        eval_fn = curve_eval(session, bd.attack, curve_size) if curve_size > 0 else None
        return DEFENSES["tsbd"](
            bd.model,
            splits.clean,
            config,
            spec=splits.spec,
            seed=session.seed,
            device=session.device,
            unlearned=unlearned,
            eval_fn=eval_fn,
            batch_transform=PhotometricLift(photometric) if photometric is not None else None,
            progress=progress,
        )

    fields = model_fields(
        session,
        "tsbd",
        attack=name,
        attack_config=bd.attack.config,
        tsbd=config,
        curve_size=curve_size,
        **({"ranking": ranking} if ranking != "clean" else {}),  # TSBD's own entries keep their keys
        **({"photometric": photometric} if photometric is not None else {}),
    )
    return _defended_cached(session, fields, run)


def _defended_cached(session: Session, fields: dict[str, Any], run) -> Defended:
    """The defended model whose cache key is ``fields``; on a miss ``run()`` computes its ``DefenseResult``."""

    def fit(m: nn.Module) -> dict[str, Any]:
        result = run()
        m.load_state_dict(result.model.state_dict())
        return {"record": result.record}

    model = model_for(session.profile, session.splits.spec, session.seed)
    model, extras, info = session.cache.get_or_train(
        "model", fields, model, fit, info=lambda: {"device": str(session.device), "threads": session.threads}
    )
    return Defended(_on_device(session, model), extras["record"], info, fields)


def oracle_data(session: Session, attack: Attack) -> OracleData:
    """The test data a labelled *oracle* pruning choice reads (BackdoorBench's FP, ANP, RNP): the
    images of :func:`evaluation_set`, so the oracle sees exactly what the reported ASR is measured on."""
    test = evaluation_set(session)
    x_bd, _ = attack.backdoor_test(test)
    return OracleData(test.x, test.y, x_bd, attack.config.target)


def defended_model(session: Session, name: str, defense: str, config: Any = None, progress: bool = False) -> Defended:
    """Defense ``defense`` (a key of ``DEFENSES``) on attack ``name``'s model; cached.

    ``config`` defaults to the profile's (:func:`defenses.config_for`). A config whose ``choice``
    is ``"oracle"`` gets the test set (:func:`oracle_data`). Notebooks use :func:`tsbd_model` for
    TSBD, which reuses the cached clean unlearning of notebook 02.
    """
    config = config or config_for(defense, session.profile)
    bd = backdoored_model(session, name, progress=progress)
    splits = session.splits

    oracle = getattr(config, "choice", None) == "oracle"

    def run():
        extra = {"oracle": oracle_data(session, bd.attack)} if oracle else {}
        return DEFENSES[defense](
            bd.model,
            splits.clean,
            config,
            spec=splits.spec,
            seed=session.seed,
            device=session.device,
            progress=progress,
            **extra,
        )

    # An oracle's choice depends on the test images it reads, so they join its key (clean-rule keys are unchanged).
    p = session.profile
    oracle_key = {"oracle_images": [p.test_size, p.eval_size]} if oracle else {}
    fields = model_fields(
        session, "defended", attack=name, attack_config=bd.attack.config, defense=defense, config=config, **oracle_key
    )
    return _defended_cached(session, fields, run)


def evaluate_cached(session: Session, fields: dict[str, Any], model: nn.Module, attack: Attack) -> dict[str, float]:
    """:func:`evaluate` of the model whose cache key is ``fields``, itself cached (later notebooks reuse it)."""
    p = session.profile
    key = {"model": fields, "test_size": p.test_size, "attack": attack.name}
    if p.eval_size is not None:
        key["eval_size"] = p.eval_size  # absent when None: the paper profile's keys stay as they were
    return session.cache.get_or_compute("evaluation", key, lambda: evaluate(session, model, attack))


def backdoor_evaluation(session: Session, name: str) -> dict[str, float]:
    """:func:`evaluate` of attack ``name``'s backdoored model, cached (the 'before' of every defense)."""
    bd = backdoored_model(session, name, progress=False)
    fields = model_fields(session, "backdoor", attack=name, attack_config=bd.attack.config)
    return evaluate_cached(session, fields, bd.model, bd.attack)
