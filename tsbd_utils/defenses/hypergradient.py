"""Implicit differentiation through a fixed point: the hypergradient i-BAU's outer update needs.

When an inner problem is solved to a fixed point ``delta* = Phi(delta*, theta)``, the implicit
function theorem gives the gradient of an outer loss ``L(delta*(theta), theta)`` without unrolling
the solver: ``dL/dtheta = d_theta L + d_theta Phi^T (I - d_delta Phi^T)^-1 d_delta L``. The inverse
is approximated by a truncated Neumann series, i.e. a fixed-point iteration of Hessian-vector
products (Zeng et al., ICLR 2022, Algorithm 1; the official code's ``fixed_point``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def implicit_hypergradient(
    outer_loss: Callable[[torch.Tensor], torch.Tensor],
    fixed_point_map: Callable[[torch.Tensor], torch.Tensor],
    delta: torch.Tensor,
    params: Sequence[torch.Tensor],
    steps: int,
    tol: float = 1e-10,
) -> tuple[list[torch.Tensor], int]:
    """Gradient of ``outer_loss(delta*(theta))`` w.r.t. ``params`` at an (approximate) fixed point ``delta``.

    ``fixed_point_map(delta)`` is Phi(delta, theta), built differentiably (``create_graph=True``) from
    ``params``. With g = d_delta L_outer, v = sum_{k<steps} (d_delta Phi^T)^k g (the fixed-point
    iteration v <- d_delta Phi^T v + g from v = 0, stopping early once an iterate moves less than
    ``tol``), the result is d_theta L_outer + d_theta Phi^T v. Returns it and the iterations run.
    """
    delta = delta.detach().requires_grad_(True)
    params = list(params)
    grads = torch.autograd.grad(outer_loss(delta), [delta, *params], allow_unused=True)
    g_delta, *g_params = (torch.zeros_like(t) if g is None else g for g, t in zip(grads, [delta, *params]))
    mapped = fixed_point_map(delta)
    # The first iterate from v = 0 is g itself: no product needed.
    v, iterations = g_delta, 1
    moved = float(g_delta.norm())
    while iterations < steps and moved >= tol:
        (jv,) = torch.autograd.grad(mapped, delta, grad_outputs=v, retain_graph=True)  # Hessian-vector product
        new = jv + g_delta
        moved, v, iterations = float((new - v).norm()), new, iterations + 1
    cross = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
    return [g if c is None else g + c for g, c in zip(g_params, cross)], iterations
