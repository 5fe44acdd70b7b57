"""What a trigger-searching defense finds, beside the real trigger: cached, for notebook 06's galleries.

Neural Cleanse reverse-engineers a stamp (mask x pattern) per class and i-BAU fits a universal
perturbation in each round. Both are computed inside the defense and not kept in its record (NC's
search covers ten classes, i-BAU's five rounds), so this module recomputes the one worth looking at
with the defense's own settings and seed and caches it under the backdoored model's key: a rerun
only reads it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..defenses import DEFENSES, ibau, nc_reverse
from ..session import Session
from .keys import model_fields
from .trained import backdoored_model


def trigger_residual(session: Session, name: str) -> torch.Tensor:
    """|x_bd - x| (C, H, W) of attack ``name``'s trigger on the first non-target test image."""
    attack = backdoored_model(session, name, progress=False).attack
    test = session.splits.test
    image = test.x[test.y != attack.config.target][:1].float() / 255
    return (attack.apply(image.to(attack.device)).cpu() - image)[0].abs()


def _found(session: Session, name: str, defense: str, config: Any, compute) -> dict[str, Any]:
    bd = backdoored_model(session, name, progress=False)
    config = config or DEFENSES[defense].for_profile(session.profile)
    fields = model_fields(session, "found-trigger", attack=name, attack_config=bd.attack.config, defense=defense,
                          config=config)
    return session.cache.get_or_compute("trigger", fields, lambda: compute(bd, config))


def nc_reversed_trigger(session: Session, name: str, config: nc_reverse.NCConfig | None = None) -> dict[str, Any]:
    """NC's reversed trigger of the target class of attack ``name``: ``image`` (mask x pattern, (C, H, W))
    and the mask's L1 ``norm``; the same search, settings and seed as inside the defense. Cached."""

    def compute(bd, cfg) -> dict[str, Any]:
        splits = session.splits
        mask, pattern, norm = nc_reverse.reverse_engineer(bd.model, splits.clean, bd.attack.config.target, cfg,
                                                  seed=session.seed, device=session.device, spec=splits.spec)
        return {"image": (mask * pattern).cpu(), "norm": float(norm)}

    return _found(session, name, "nc", config, compute)


def ibau_perturbation(session: Session, name: str, config: ibau.IBAUConfig | None = None) -> torch.Tensor:
    """The universal perturbation (C, H, W) of i-BAU's first round on attack ``name``'s model, as inside
    the defense. Cached."""

    def compute(bd, cfg) -> dict[str, Any]:
        splits = session.splits
        delta = ibau.universal_perturbation(bd.model, splits.clean, cfg, spec=splits.spec, seed=session.seed,
                                            device=session.device)
        return {"delta": delta}

    return _found(session, name, "ibau", config, compute)["delta"]
