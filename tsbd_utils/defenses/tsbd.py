"""TSBD: two-stage backdoor defense (Lin et al., NeurIPS 2024, https://arxiv.org/abs/2405.20291).

Stage 1, NWC-based zero reinitialization: unlearn the backdoored model on clean data (gradient
ascent until clean accuracy <= 10%), rank every neuron of every non-shortcut conv layer by its
weight change (NWC), take the top ``n`` share, and in the *original* model zero the top ``m``
share of those neurons' individual weight changes (official code: ``zero_reinit_weight``).

Stage 2, activeness-aware fine-tuning: fine-tune on the same clean images with
``g = (1 - alpha) * grad L(theta) + alpha * grad L(theta + r * g1 / ||g1||)`` (norm per parameter
tensor), the first-order estimate of a gradient-norm penalty (Zhao et al., ICML 2022): it keeps
the neurons from becoming "active" again, which would let the backdoor grow back.

The defender holds the backdoored model and 5% clean training data; no poisoned data.

Choice of n. The official code sweeps n in {0.01, ..., 0.9} and never picks one. The suite fixes
one n per profile (``Profile.tsbd_neuron_ratio``), the same for every attack, chosen with clean data only
(see :func:`choose_neuron_ratio` and notebook 04, which also shows a sweep of n).

Example:
    >>> result = DEFENSES["tsbd"](model, splits.clean, TSBDConfig.for_profile(profile),
    ...                           spec=splits.spec, seed=0, device="cpu")
    >>> result.record["stage1"]["zeroed_weights"]
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Profile, TrainConfig, replace_checked
from ..data import DatasetSpec, ImageData
from ..observations import UnlearnConfig, Unlearned, clean_unlearn, flatten_layers, nwc_layers, weight_changes
from ..training import BatchTransform, History, Step, train
from .base import DefenseResult, DefenseSpec, register
from .common import capped_epochs

@dataclass(frozen=True)
class TSBDConfig:
    """TSBD's settings; defaults are the official config (``config/defense/tsbd/config.yaml``)."""

    neuron_ratio: float = 0.25  # n: share of neurons (by NWC) to reinitialize; no official value (Profile)
    weight_ratio: float = 0.7  # m: share of those neurons' individual weight changes that is zeroed
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)  # stage 1's clean unlearning
    radius: float = 0.05  # r: size of the perturbation along the per-tensor normalised gradient
    alpha: float = 0.7  # weight of the perturbed gradient; 0 gives vanilla fine-tuning
    lr: float = 0.01  # stage 2 SGD learning rate; no weight decay, no scheduler
    momentum: float = 0.9  # stage 2 SGD momentum
    epochs: int = 21  # stage 2 passes over the clean images (official: range(20 + 1))
    batch_size: int = 256  # both stages

    def __post_init__(self) -> None:
        checks = {
            "neuron_ratio": 0 <= self.neuron_ratio <= 1,
            "weight_ratio": 0 <= self.weight_ratio <= 1,
            "radius": self.radius >= 0,
            "alpha": 0 <= self.alpha <= 1,
            "lr": self.lr >= 0,
            "momentum": 0 <= self.momentum < 1,
            "epochs": isinstance(self.epochs, int) and self.epochs >= 0,
            "batch_size": isinstance(self.batch_size, int) and self.batch_size > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"invalid TSBD setting(s) {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}; allowed: "
                "neuron_ratio, weight_ratio, alpha in [0, 1]; radius, lr >= 0; momentum in [0, 1); "
                "epochs >= 0; batch_size > 0"
            )

    @classmethod
    def for_profile(cls, profile: Profile, **overrides: Any) -> TSBDConfig:
        """The profile's TSBD: its n (``Profile.tsbd_neuron_ratio``), its clean unlearning
        (:meth:`UnlearnConfig.for_profile`), and its epoch cap (smoke only)."""
        base = cls(
            neuron_ratio=profile.tsbd_neuron_ratio,
            unlearn=UnlearnConfig.for_profile(profile, "clean"),
            epochs=capped_epochs(profile, cls.epochs),
        )
        return replace_checked(base, **overrides)

    def finetune_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=0.0,
            schedule="constant",
            augment=True,
            amp=False,  # float32 on CUDA too, as the official code runs it
        )


# ---------------------------------------------------------------------------------------------
# Stage 1


def zero_reinit(
    model: nn.Module,
    unlearned: nn.Module,
    neuron_ratio: float,
    weight_ratio: float = 0.7,
    layers: list[str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` with the top weight changes of the top-NWC neurons set to zero.

    1. NWC per neuron (output channel) of each layer from ``model`` to ``unlearned``; all layers
       ranked together; the top ``int(neuron_ratio * neurons)`` kept.
    2. Their individual changes |dw| pooled; the threshold is the smallest of the top
       ``int(weight_ratio * len)``; every weight of those neurons with |dw| >= threshold is zeroed.

    Returns the copy and a record: neurons and zeroed weights per layer, the threshold.
    """
    if not (0 <= neuron_ratio <= 1 and 0 <= weight_ratio <= 1):
        raise ValueError(f"neuron_ratio {neuron_ratio!r} and weight_ratio {weight_ratio!r} must be in [0, 1]")
    layers = layers if layers is not None else nwc_layers(model)
    changes = weight_changes(model, unlearned, layers)
    nwc, owner = flatten_layers({name: changes[name].sum(1) for name in layers})
    n_top = int(neuron_ratio * len(nwc))
    top = nwc.argsort(descending=True, stable=True)[:n_top].tolist()
    chosen: dict[str, list[int]] = {name: [] for name in layers}
    for index in top:
        name, k = owner[index]
        chosen[name].append(k)
    pooled = torch.cat([changes[name][chosen[name]].flatten() for name in layers]) if n_top else torch.empty(0)
    n_weights = int(weight_ratio * len(pooled))
    reinit = copy.deepcopy(model)
    modules = dict(reinit.named_modules())
    record: dict[str, Any] = {"neurons": n_top, "total_neurons": len(nwc), "threshold": None, "layers": {}}
    if n_weights == 0:
        record["zeroed_weights"] = 0
        return reinit, record
    threshold = pooled.topk(n_weights).values.min()
    zeroed = 0
    with torch.no_grad():
        for name in layers:
            rows = chosen[name]
            if not rows:
                continue
            weight = modules[name].weight
            mask = torch.zeros_like(changes[name], dtype=torch.bool)
            mask[rows] = changes[name][rows] >= threshold
            weight.masked_fill_(mask.view_as(weight).to(weight.device), 0.0)
            record["layers"][name] = {"neurons": len(rows), "zeroed_weights": int(mask.sum())}
            zeroed += int(mask.sum())
    record.update(threshold=float(threshold), zeroed_weights=zeroed)
    return reinit, record


OFFICIAL_SWEEP = (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 0.9)  # n values the official code runs
DISRUPTION = 2 / 3  # the rule below: stage 1 must cost at least a third of the clean accuracy


def choose_neuron_ratio(clean_acc: dict[float, float], before: float, disruption: float = DISRUPTION) -> float:
    """The suite's rule for n, from clean data only: the smallest n whose stage 1 is disruptive enough.

    ``clean_acc`` maps candidate n (the official sweep) to the accuracy on the defender's clean
    images right after stage 1 (averaged over the models the rule is set for); ``before`` is that
    accuracy before stage 1. The rule returns the smallest n with ``clean_acc[n] <= disruption *
    before``: stage 1 has to remove enough of the network that the model visibly breaks (a third
    of its clean accuracy), and stage 2 is there to earn it back. No backdoor data, no test set.
    Falls back to the largest candidate when none qualifies.
    """
    if not clean_acc:
        raise ValueError("no candidate neuron ratios given")
    for n in sorted(clean_acc):
        if clean_acc[n] <= disruption * before:
            return n
    return max(clean_acc)


# ---------------------------------------------------------------------------------------------
# Stage 2


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class ActivenessAwareStep(Step):
    """One activeness-aware step, in place: g = (1 - alpha) g1 + alpha * grad L(theta + r g1/||g1||).

    Per batch: forward/backward at theta (g1; BN running statistics update here, once); add
    e = r * g1 / ||g1|| to each parameter tensor; forward/backward again with BN running statistics
    frozen (``track_running_stats`` off: batch statistics, no update); restore the saved weights
    exactly; combine the gradients; one optimizer step. Two passes, no model copy, no extra
    forward. With ``alpha == 0`` the second pass is skipped: a plain SGD step.
    """

    def __init__(self, radius: float, alpha: float, eps: float = 1e-12) -> None:
        if radius < 0 or not 0 <= alpha <= 1:
            raise ValueError(f"radius must be >= 0 and alpha in [0, 1], got radius={radius!r}, alpha={alpha!r}")
        self.radius, self.alpha, self.eps = radius, alpha, eps
        self._backup: list[torch.Tensor] | None = None  # one buffer per parameter, reused every step

    def __call__(self, model, x, y, optimizer):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.alpha > 0:
            self._perturbed_gradient(model, x, y)
        optimizer.step()
        return loss.detach(), logits.detach()

    def _perturbed_gradient(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        params = [p for p in model.parameters() if p.grad is not None]
        g1 = [p.grad for p in params]
        if self._backup is None or [b.shape for b in self._backup] != [p.shape for p in params]:
            self._backup = [torch.empty_like(p) for p in params]
        with torch.no_grad():
            torch._foreach_copy_(self._backup, params)
            # One synchronisation for all the norms, not one per tensor.
            scale = [self.radius / (n + self.eps) for n in torch.stack(torch._foreach_norm(g1)).tolist()]
            torch._foreach_add_(params, torch._foreach_mul(g1, scale))
        for p in params:
            p.grad = None
        norms = [(bn, bn.track_running_stats) for bn in _batch_norms(model)]
        try:
            for bn, _ in norms:
                bn.track_running_stats = False  # train mode: batch statistics, running ones untouched
            F.cross_entropy(model(x).float(), y).backward()
        finally:
            for bn, tracked in norms:
                bn.track_running_stats = tracked
            with torch.no_grad():
                torch._foreach_copy_(params, self._backup)
        g2 = [p.grad for p in params]
        torch._foreach_mul_(g2, self.alpha)
        torch._foreach_add_(g2, g1, alpha=1 - self.alpha)


class CopyingActivenessAwareStep(Step):
    """The same update, formulated as the official code does it: a model copy per batch.

    Kept as a reference for tests (the in-place step must match it) and for
    ``benchmarks/stage2_step.py`` (the in-place step must be faster). Not used by the defense.
    """

    def __init__(self, radius: float, alpha: float, eps: float = 1e-12) -> None:
        self.radius, self.alpha, self.eps = radius, alpha, eps

    def __call__(self, model, x, y, optimizer):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        shadow = copy.deepcopy(model)  # its BN statistics, updated by the second pass, are thrown away
        with torch.no_grad():  # (deepcopy does not copy .grad: read g1 from the original)
            for p, q in zip(model.parameters(), shadow.parameters()):
                if p.grad is not None:
                    q.add_(p.grad * (self.radius / (p.grad.norm() + self.eps)))
        shadow.zero_grad(set_to_none=True)
        F.cross_entropy(shadow(x).float(), y).backward()
        for p, q in zip(model.parameters(), shadow.parameters()):
            if p.grad is not None:
                p.grad.mul_(1 - self.alpha).add_(q.grad, alpha=self.alpha)
        optimizer.step()
        return loss.detach(), logits.detach()


def activeness_aware_finetune(
    model: nn.Module,
    clean: ImageData,
    config: TSBDConfig = TSBDConfig(),
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    batch_transform: BatchTransform | None = None,
    progress: bool = False,
) -> History:
    """Stage 2 in place on ``model``: ``config.epochs`` epochs of :class:`ActivenessAwareStep`.

    ``config.alpha = 0`` is the vanilla fine-tuning of the paper's Table 4 (same loop, plain steps).
    ``eval_fn`` (for curves) is called after each epoch. ``batch_transform`` changes every clean
    batch after the usual crop and flip (a labelled variant, such as
    :class:`~tsbd_utils.shortcut.PhotometricLift`; the official method has none).
    """
    return train(
        model,
        clean,
        config.finetune_config(),
        spec=spec,
        seed=seed,
        device=device,
        step=ActivenessAwareStep(config.radius, config.alpha),
        eval_fn=eval_fn,
        batch_transform=batch_transform,
        progress=progress,
        desc="activeness-aware fine-tuning" if config.alpha > 0 else "vanilla fine-tuning",
    )


# ---------------------------------------------------------------------------------------------
# Both stages




def defend(
    model: nn.Module,
    clean: ImageData,
    config: TSBDConfig | None = None,
    *,
    spec: DatasetSpec,
    seed: int,
    device: str | torch.device = "cpu",
    unlearned: Unlearned | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    batch_transform: BatchTransform | None = None,
    progress: bool = False,
) -> DefenseResult:
    """TSBD on ``model`` with the defender's ``clean`` images; ``model`` is left as it was.

    ``unlearned`` reuses a clean-unlearning run of the same model (notebooks cache it); otherwise
    stage 1 runs it here. ``batch_transform`` is passed to stage 2 only (see
    :func:`activeness_aware_finetune`): a labelled variant, not the official method.
    """
    config = config or TSBDConfig()
    if unlearned is None:
        unlearned = clean_unlearn(
            model,
            clean,
            spec=spec,
            seed=seed,
            device=device,
            config=dataclasses.replace(config.unlearn, batch_size=config.batch_size),
        )
    repaired, stage1 = zero_reinit(model, unlearned.model, config.neuron_ratio, config.weight_ratio)
    history = activeness_aware_finetune(
        repaired,
        clean,
        config,
        spec=spec,
        seed=seed,
        device=device,
        eval_fn=eval_fn,
        batch_transform=batch_transform,
        progress=progress,
    )
    record = {
        "unlearn_epochs": unlearned.epochs,
        "unlearn_reached": unlearned.reached,
        "stage1": stage1,
        "stage2": history.to_dict(),
        "config": dataclasses.asdict(config),
    }
    return DefenseResult(repaired.eval(), record)


register(
    DefenseSpec(
        name="tsbd",
        title="TSBD",
        paper=(
            'Lin, Liu, Wei, Li and Xiong, '
            '"Unveiling and Mitigating Backdoor Vulnerabilities based on Unlearning Weight Changes '
            'and Backdoor Activeness", NeurIPS 2024'
        ),
        url="https://arxiv.org/abs/2405.20291",
        config=TSBDConfig,
        defend=defend,
        holds="5% clean training data",
        options=("eval_fn",),
        paper_average=(91.7, 2.18, 97.09),
    )
)
