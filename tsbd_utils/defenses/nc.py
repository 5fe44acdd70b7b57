"""Neural Cleanse (Wang et al., IEEE S&P 2019, https://doi.org/10.1109/SP.2019.00031), as BackdoorBench runs it.

"Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks", by B. Wang,
Y. Yao, S. Shan, H. Li, B. Viswanath, H. Zheng and B. Y. Zhao.

1. For every class k, reverse-engineer the smallest trigger that sends clean images to k: a mask
   m (H x W, shared by the channels) and a pattern p (C x H x W), both ``tanh(.) / (2 + eps) +
   0.5`` of free parameters, stamped as ``x' = (1 - m) x + m p``; Adam minimises
   ``CE(f(x'), k) + cost * |m|_1`` with BackdoorBench's dynamic cost and early stopping.
2. MAD outlier test on the K mask norms: anomaly index ``(median - norm) / (1.4826 * MAD)``;
   a class whose index exceeds 2 (its norm below the median) is flagged as a backdoor target.
3. No class flagged: the model is returned unchanged (BackdoorBench does the same; tables show
   DER = 50 for such rows). Otherwise fine-tune on the clean images, a share of which carries a
   reversed trigger of a flagged class *with its true label*: unlearning, not pruning.

The defender holds the model and the 5% clean training subset; no poisoned data.

BackdoorBench (``defense/nc.py``, ``config/defense/nc/cifar10.yaml``): nc_epoch 80, batch 256,
Adam lr 0.1 betas (0.5, 0.9), init_cost 1e-3, cost multiplier 2 (down by 2**1.5), patience 5,
attack success threshold 98%, early stop (0.99, 25), unlearning ratio 0.2, then its fine-tuning
recipe (100 epochs, SGD 0.01, cosine). The paper profile runs exactly these.

Profiles (:meth:`.nc_reverse.NCConfig.for_profile`). Fine-tuning epochs scale with ``defense_scale`` (quick:
100 -> 10). Reverse engineering keeps BackdoorBench's 80 epochs and schedule (patience and early
stopping count epochs), but a scaled profile shrinks the epoch to 40 images per label, drawn anew
each epoch, in Adam steps of 8 (:data:`.nc_reverse.SCALED_REVERSE`). All labels of a group are optimised in
one forward pass (Adam acts element-wise, so this equals one optimiser per label, up to float
rounding; every label sees the same batches, where BackdoorBench reshuffles per label).

Unlike BackdoorBench, unlearning stamps ``(1 - m) x + m p`` with the reversed tensors themselves
(BackdoorBench reads them back from min-max-normalised PNGs), and with several flagged labels each
stamped image carries one of them in turn (BackdoorBench adds one stamped copy per label).

Example:
    >>> result = DEFENSES["nc"](model, splits.clean, NCConfig.for_profile(profile),
    ...                         spec=splits.spec, seed=0, device="cpu")
    >>> result.record["flagged"], result.record["anomaly_indices"]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..data import DatasetSpec, ImageData
from ..rng import generator
from .base import Budget, DefenseResult, DefenseSpec, register
from .common import fine_tune, working_copy
from .nc_reverse import NCConfig, Trigger, reverse_engineer_all

MAD_CONSISTENCY = 1.4826  # 1.4826 * MAD estimates the standard deviation of normally distributed norms

# ---------------------------------------------------------------------------------------------
# Outlier test


def anomaly_indices(norms: Sequence[float]) -> list[float]:
    """``(median - norm) / (1.4826 * MAD)`` per label: positive for norms below the median.

    The median is ``torch.median``'s (the lower middle value for an even count), as BackdoorBench's.
    With MAD = 0 a norm below the median is infinitely anomalous (``inf``), one above it ``-inf``.
    """
    t = torch.as_tensor(list(norms), dtype=torch.float64)
    if t.ndim != 1 or len(t) < 2:
        raise ValueError(f"need at least two norms, got {list(norms)!r}")
    median = t.median()
    mad = MAD_CONSISTENCY * (t - median).abs().median()
    if mad == 0:
        return [math.copysign(math.inf, d) if d else 0.0 for d in (median - t).tolist()]
    return ((median - t) / mad).tolist()


def flagged_labels(norms: Sequence[float], threshold: float = 2.0) -> list[int]:
    """Labels whose anomaly index exceeds ``threshold`` (their norm below the median), smallest norm first."""
    # An index above a threshold >= 0 already means a norm below the median (BackdoorBench checks both).
    flagged = [k for k, a in enumerate(anomaly_indices(norms)) if a > threshold]
    return sorted(flagged, key=lambda k: norms[k])


# ---------------------------------------------------------------------------------------------
# Unlearning


def unlearning_set(clean: ImageData, triggers: Sequence[Trigger], ratio: float, seed: int) -> ImageData:
    """The clean images with a seeded ``ratio`` share stamped by ``triggers`` (in turn), labels kept.

    BackdoorBench stamps a fixed share of the clean subset once (before augmentation) and stores
    it as 8-bit images; so does this. With several flagged labels each stamped image carries one.
    """
    count = int(len(clean) * ratio)
    chosen = torch.randperm(len(clean), generator=generator(seed, "nc-unlearn-images"))[:count].to(clean.x.device)
    x = clean.x.clone()
    for j, trigger in enumerate(triggers):
        part = chosen[j :: len(triggers)]
        stamped = trigger.stamp(x[part].float().div_(255))
        x[part] = stamped.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return ImageData(x, clean.y)


def defend(
    model: nn.Module,
    clean: ImageData,
    config: NCConfig | None = None,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    triggers: Sequence[Trigger | tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: bool = False,
) -> DefenseResult:
    """Neural Cleanse on ``model`` with the defender's ``clean`` images; ``model`` is left as it was.

    ``triggers`` reuses reversed triggers, one per class in label order (:class:`Trigger` objects
    from :func:`reverse_engineer_all`, or ``(mask, pattern)`` pairs); otherwise they are computed here.
    """
    config = config or NCConfig()
    if triggers is None:
        triggers = reverse_engineer_all(model, clean, config, seed=seed, device=device, spec=spec, progress=progress)
    triggers = [t if isinstance(t, Trigger) else Trigger(t[0], t[1], float(t[0].abs().sum())) for t in triggers]
    norms = [t.norm for t in triggers]
    flagged = flagged_labels(norms, config.anomaly_threshold)
    repaired = working_copy(model, device)
    record: dict[str, Any] = {
        "norms": norms,
        "anomaly_indices": [a if math.isfinite(a) else None for a in anomaly_indices(norms)],  # None: MAD 0
        "flagged": flagged,
        "unlearned": bool(flagged),
        "reverse_epochs": [t.epochs for t in triggers],
        "unlearning_images": 0,
        "finetune": None,
        "config": dataclasses.asdict(config),
    }
    if flagged:
        data = unlearning_set(clean, [triggers[k] for k in flagged], config.unlearning_ratio, seed)
        history = fine_tune(
            repaired,
            data,
            config.finetune,
            spec=spec,
            seed=seed,
            device=device,
            progress=progress,
            desc="NC unlearning",
        )
        record.update(unlearning_images=int(len(clean) * config.unlearning_ratio), finetune=history.to_dict())
    return DefenseResult(repaired.eval(), record)


def budget(config: NCConfig, images: int, record: dict[str, Any] | None = None) -> Budget:
    """NC's budget, from its run: the reverse-engineering epochs of each group of labels optimised together
    (early stopping ends some sooner), then the unlearning epochs if a label was flagged."""
    if record is None:
        raise ValueError("NC's budget depends on its run (early stopping per label): pass the run's record")
    per_label = record["reverse_epochs"]
    groups = [per_label[i : i + config.class_batch] for i in range(0, len(per_label), config.class_batch)]
    per_epoch = images if config.epoch_images is None else min(images, config.epoch_images)
    steps = sum(max(g) for g in groups) * math.ceil(per_epoch / config.batch_size)
    examples = sum(max(g) * len(g) for g in groups) * per_epoch  # each image is stamped once per label of its group
    passes = f"{sum(per_label)} reverse-engineering epochs over {len(per_label)} labels ({per_epoch} images each)"
    if not record["unlearned"]:
        return Budget(passes, steps, examples, images)
    return config.finetune.budget(f"{passes} + {config.finetune.epochs} unlearning epochs", images, (steps, examples))


register(
    DefenseSpec(
        name="nc",
        title="NC",
        paper=(
            'Wang, Yao, Shan, Li, Viswanath, Zheng and Zhao, '
            '"Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks", IEEE S&P 2019'
        ),
        url="https://doi.org/10.1109/SP.2019.00031",
        config=NCConfig,
        defend=defend,
        holds="5% clean training data",
        options=(),
        paper_average=(90.72, 27.24, 84.56),
        budget=budget,
    )
)
