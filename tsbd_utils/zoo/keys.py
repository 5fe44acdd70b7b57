"""Cache keys of the zoo's models: everything that determines a model, and nothing else.

A model's key is its dataset, training-set size, architecture, width, training recipe, seed and,
for a backdoored model, the attack and its config; later steps (unlearning, a defense) add their
own fields. Keys are compared as written: adding a field to an existing kind of model changes every
cached key of that kind, so new fields are added only where they are not the default.
"""

from __future__ import annotations

from typing import Any

from ..config import PROFILES, Profile
from ..session import Session
from ..unlearning import UnlearnConfig


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


def defender_fields(session: Session) -> dict[str, Any]:
    """What the defender's clean images add to the key of a model computed from them (unlearning, a defense):
    their share of the training set, where it is not the profile's own (so the profiles' keys stay as they
    were). The clean subset does not shape the clean or backdoored models, whose keys leave it out."""
    p = session.profile
    return {} if p.clean_ratio == PROFILES[p.name].clean_ratio else {"clean_ratio": p.clean_ratio}


def clean_fields(session: Session, train_seed: int | None = None) -> dict[str, Any]:
    """The key of the clean model: the session's own keeps its key, a second one adds its training seed."""
    seed = session.seed if train_seed is None else train_seed
    return model_fields(session, "clean", **({} if seed == session.seed else {"train_seed": seed}))


def backdoor_fields(session: Session, name: str, attack_config: Any) -> dict[str, Any]:
    """The key of attack ``name``'s backdoored model under ``attack_config``."""
    return model_fields(session, "backdoor", attack=name, attack_config=attack_config)


def evaluation_key(session: Session, fields: dict[str, Any], attack_name: str) -> dict[str, Any]:
    """The key of one evaluation: the evaluated model's key, the test images and the attack's trigger."""
    p = session.profile
    key = {"model": fields, "test_size": p.test_size, "attack": attack_name}
    if p.eval_size is not None:
        key["eval_size"] = p.eval_size  # absent when None: the paper profile's keys stay as they were
    return key
