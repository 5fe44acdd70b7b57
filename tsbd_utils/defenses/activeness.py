"""TSBD's stage-2 update: one activeness-aware SGD step, in place and, for the tests, copy per batch.

``g = (1 - alpha) * grad L(theta) + alpha * grad L(theta + r * g1 / ||g1||)`` with the norm per parameter
tensor: the first-order estimate of a gradient-norm penalty (Zhao et al., ICML 2022). Notebook 05 explains it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..training import Step


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
            torch._foreach_add_(params, torch._foreach_mul(g1, self._scales(g1)))
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

    def _scales(self, g1: list[torch.Tensor]) -> list[torch.Tensor]:
        """``r / (||g1_i|| + eps)`` per tensor, as 0-d tensors on the device: no host synchronisation, so a GPU
        keeps its queue full. Computed in float64 and rounded once, the value a Python float would give
        (float32 on MPS, which has no float64)."""
        norms = torch.stack(torch._foreach_norm(g1))
        wide = torch.float32 if norms.device.type == "mps" else torch.float64
        return list((self.radius / (norms.to(wide) + self.eps)).to(norms.dtype).unbind())


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


class OfficialActivenessAwareStep(Step):
    """The update as the official code (linweiii/TSBD, ``train_finetuning_reg``) runs it, for
    ``benchmarks/stage2_step.py``: per batch a deep copy of the model; both gradient passes on the copy (its
    BatchNorm statistics are thrown away with it); the combined gradient written into the model; one optimizer
    step; then a third, train-mode forward of the model with a graph (the official code logs its loss), which
    is the only update of the model's BatchNorm running statistics. The weights move as with
    :class:`ActivenessAwareStep`; the running statistics come from the updated weights instead. Adds ``eps``
    to the norms (the official code divides by them bare). Not used by the defense.
    """

    def __init__(self, radius: float, alpha: float, eps: float = 1e-12) -> None:
        self.radius, self.alpha, self.eps = radius, alpha, eps

    def __call__(self, model, x, y, optimizer):
        shadow = copy.deepcopy(model)
        shadow.zero_grad(set_to_none=True)
        F.cross_entropy(shadow(x).float(), y).backward()
        g1 = [q.grad.clone() if q.grad is not None else None for q in shadow.parameters()]
        with torch.no_grad():
            for q, g in zip(shadow.parameters(), g1):
                if g is not None:
                    q.add_(g * (self.radius / (g.norm() + self.eps)))
        shadow.zero_grad(set_to_none=True)
        F.cross_entropy(shadow(x).float(), y).backward()
        optimizer.zero_grad(set_to_none=True)
        for p, q, g in zip(model.parameters(), shadow.parameters(), g1):
            if g is not None:
                p.grad = g.mul_(1 - self.alpha).add_(q.grad, alpha=self.alpha)
        optimizer.step()
        logits = model(x)  # the third forward: train mode, outside no_grad, as the official loop logs its loss
        return F.cross_entropy(logits.float(), y).detach(), logits.detach()
