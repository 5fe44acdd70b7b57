"""Learning-rate schedules as pure functions of training progress.

Each schedule maps ``(step, total_steps, steps_per_epoch)`` to a multiplier of the peak learning
rate, so the training loop needs no scheduler object and a schedule is trivially testable.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .registry import Registry

Schedule = Callable[[int, int, int], float]
SCHEDULES: Registry[Schedule] = Registry("schedule")


@SCHEDULES.register("constant")
def constant(step: int, total_steps: int, steps_per_epoch: int) -> float:
    """No schedule: TSBD's stages, WaNet's effectively constant lr (milestones past the end)."""
    return 1.0


@SCHEDULES.register("cosine")
def cosine(step: int, total_steps: int, steps_per_epoch: int) -> float:
    """BackdoorBench's CosineAnnealingLR(T_max=epochs), stepped once per epoch (not per batch)."""
    epochs = max(1, math.ceil(total_steps / steps_per_epoch))
    epoch = step // steps_per_epoch
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


@SCHEDULES.register("onecycle")
def onecycle(step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up over the first 25% of steps from 0.1x to 1x, then linear decay to 0.

    A triangular one-cycle: with few epochs (the quick profile) it trains much further than a
    cosine schedule started at its peak.
    """
    warm = max(1, int(0.25 * total_steps))
    if step < warm:
        return 0.1 + 0.9 * step / warm
    return max(0.0, (total_steps - step) / max(1, total_steps - warm))
