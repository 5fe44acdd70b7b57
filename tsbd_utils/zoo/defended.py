"""Defended models: TSBD and the eight baselines run on the zoo's backdoored models, through the cache.

A defended model's key is its backdoored model's key plus the defense and its config (for TSBD,
also the ranking and stage-2 options that are not the default), so notebook 06 computes each of
its 64 runs once and every later notebook reads them back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..attacks import AttackConfig
from ..config import resolve
from ..defenses import DEFENSES, REINIT_SCHEMES, DefenseContext, DefenseResult, FineTuning, TSBDConfig
from ..session import Session
from ..shortcut import PhotometricConfig, PhotometricLift
from ..unlearning import UNLEARN_MODES
from .evaluation import curve_eval, oracle_data
from .keys import defender_fields, model_fields, unlearn_config
from .trained import Defended, backdoored_model, cached_model, unlearned_model, unlearning_outcome

# Notebook 05 records ACC / ASR on subsets of this many images after every stage-2 epoch; the size is part
# of the cached models' keys, so every notebook that reads those runs asks with the same value.
CURVE_IMAGES = 500

def defense_context(session: Session, progress: bool = False, **options: Any) -> DefenseContext:
    """What a defense may use under ``session``: the defender's clean images, the dataset, seed and
    device; ``options`` sets the optional inputs (``oracle``, ``eval_fn``)."""
    splits = session.splits
    return DefenseContext(
        clean=splits.clean, spec=splits.spec, seed=session.seed, device=session.device, progress=progress, **options
    )


def defended_cached(session: Session, fields: dict[str, Any], run) -> Defended:
    """The defended model whose cache key is ``fields``; on a miss ``run()`` computes its ``DefenseResult``."""

    def fit(m: nn.Module) -> dict[str, Any]:
        result: DefenseResult = run()
        m.load_state_dict(result.model.state_dict())
        return {"record": result.record}

    model, extras, info = cached_model(session, fields, fit)
    return Defended(model, extras["record"], info, fields)


def tsbd_model(
    session: Session,
    name: str,
    config: TSBDConfig | None = None,
    curve_size: int = 0,
    ranking: str = "clean",
    photometric: PhotometricConfig | None = None,
    progress: bool = False,
    *,
    reinit: str = "zero",
    attack_config: AttackConfig | None = None,
) -> Defended:
    """TSBD (or, with ``alpha=0``, stage 1 + vanilla fine-tuning) on attack ``name``'s model; cached.

    Stage 1 reuses the cached unlearning of :func:`.trained.unlearned_model`: ``ranking="clean"`` is
    TSBD; ``ranking="poison"`` ranks neurons by *poison* unlearning instead, an oracle no defender has
    (it needs the trigger), used only to ask whether a failure comes from the ranking. ``curve_size
    > 0`` records ACC / ASR on subsets of that many images after every stage-2 epoch (in the record).
    ``photometric`` fine-tunes with :class:`~tsbd_utils.shortcut.PhotometricLift` on the clean images:
    a labelled variant that tests the background-shortcut explanation, not TSBD as published.
    ``reinit`` names stage 1's scheme (:data:`~tsbd_utils.defenses.REINIT_SCHEMES`; ``"zero"`` is TSBD's)
    and ``attack_config`` the backdoored model (:func:`.trained.backdoored_model`; notebook 08's
    poisoning ratios).
    """
    if ranking not in UNLEARN_MODES:
        raise ValueError(f"unknown ranking {ranking!r}; allowed: {', '.join(UNLEARN_MODES)}")
    REINIT_SCHEMES.check(reinit)
    config = config or TSBDConfig.for_profile(session.profile)
    bd = backdoored_model(session, name, attack_config, progress=progress)

    unlearn = config.unlearn if ranking == "clean" else unlearn_config(session.profile, "poison")
    # Needed for the key too (its outcome), so loaded, or run, even when the TSBD model is cached.
    unlearned = unlearned_model(session, name, ranking, unlearn, progress=progress, attack_config=attack_config)

    def run() -> DefenseResult:
        eval_fn = curve_eval(session, bd.attack, curve_size) if curve_size > 0 else None
        context = defense_context(session, progress, eval_fn=eval_fn)
        lift = PhotometricLift(photometric) if photometric is not None else None
        return DEFENSES["tsbd"].run(bd.model, context, config, unlearned=unlearned, batch_transform=lift, reinit=reinit)

    fields = model_fields(
        session,
        "tsbd",
        attack=name,
        attack_config=bd.attack.config,
        tsbd=config,
        curve_size=curve_size,
        **({"ranking": ranking} if ranking != "clean" else {}),  # TSBD's own entries keep their keys
        **({"photometric": photometric} if photometric is not None else {}),
        **({"reinit": reinit} if reinit != "zero" else {}),
        **defender_fields(session),
        **unlearning_outcome(unlearned),
    )
    return defended_cached(session, fields, run)


def defended_model(session: Session, name: str, defense: str, config: Any = None, progress: bool = False) -> Defended:
    """Defense ``defense`` (a key of ``DEFENSES``) on attack ``name``'s model; cached (a session with another
    clean share, :meth:`~tsbd_utils.session.Session.variant`, has its own entries).

    ``config`` defaults to the profile's (``DEFENSES[defense].for_profile``). A config whose
    ``choice`` is ``"oracle"`` gets the test set (:func:`.evaluation.oracle_data`). Notebooks use
    :func:`tsbd_model` for TSBD, which reuses the cached clean unlearning of notebook 02.
    """
    spec = DEFENSES[defense]
    config = config or spec.for_profile(session.profile)
    bd = backdoored_model(session, name, progress=progress)
    oracle = getattr(config, "choice", None) == "oracle"

    def run() -> DefenseResult:
        options = {"oracle": oracle_data(session, bd.attack)} if oracle else {}
        return spec.run(bd.model, defense_context(session, progress, **options), config)

    # An oracle's choice depends on the test images it reads, so they join its key (clean-rule keys are unchanged).
    p = session.profile
    oracle_key = {"oracle_images": [p.test_size, p.eval_size]} if oracle else {}
    fields = model_fields(
        session,
        "defended",
        attack=name,
        attack_config=bd.attack.config,
        defense=defense,
        config=config,
        **oracle_key,
        **defender_fields(session),
    )
    return defended_cached(session, fields, run)


def tsbd_runs(session: Session, name: str, config: TSBDConfig | None = None) -> dict[str, Defended]:
    """Notebook 05's four stage-2 runs on attack ``name``, by table label, all from the same
    stage-1 model: faithful TSBD, vanilla fine-tuning through TSBD's loop (``alpha = 0``, the same epochs
    and clean images: the same-budget control), and both with the photometric lift of the clean images
    (:class:`~tsbd_utils.shortcut.PhotometricConfig`'s defaults), a labelled variant. Cached."""
    config = config or TSBDConfig.for_profile(session.profile)
    vanilla = dataclasses.replace(config, alpha=0.0)
    lift = PhotometricConfig()
    return {
        "TSBD": tsbd_model(session, name, config, curve_size=CURVE_IMAGES),
        "vanilla FT": tsbd_model(session, name, vanilla, curve_size=CURVE_IMAGES),
        "TSBD + lift": tsbd_model(session, name, config, photometric=lift),
        "vanilla FT + lift": tsbd_model(session, name, vanilla, photometric=lift),
    }


# The baselines whose whole budget is a fine-tuning recipe, which matched_config can stretch. NC is not one:
# its reverse engineering also follows the profile's scale, so a matched NC would change more than its epochs.
MATCHABLE = ("ft", "fp", "nad")


def matched_config(session: Session, defense: str, epochs: int) -> Any:
    """Defense ``defense``'s config with its fine-tuning at ``epochs`` epochs (TSBD's stage-2 count, for a
    same-budget comparison) instead of the profile's scaled count; its other epoch counts (NAD's teacher)
    keep their ratio to it. Only for :data:`MATCHABLE` defenses."""
    if defense not in MATCHABLE:
        raise ValueError(f"{defense!r} has no fine-tuning recipe to match; allowed: {', '.join(MATCHABLE)}")
    spec = DEFENSES[defense]
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    # The profile whose defense_scale turns the published fine-tuning epochs into ``epochs``.
    scale = epochs / FineTuning().epochs
    return spec.for_profile(resolve(session.profile, defense_scale=scale))
