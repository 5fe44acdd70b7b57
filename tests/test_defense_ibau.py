"""i-BAU: the implicit hypergradient against closed forms and brute force, the perturbation fit, the registry."""

import copy
import dataclasses
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tsbd_utils import config, data
from tsbd_utils.defenses import DEFENSES, ibau
from tsbd_utils.defenses.hypergradient import implicit_hypergradient
from tsbd_utils.defenses.ibau import IBAUConfig, universal_perturbation

from .helpers import noise_images, tiny_model

SPEC = dataclasses.replace(data.DATASETS["fashion_mnist"], mean=(0.3,), std=(0.3,), crop_pad=1)
TINY = IBAUConfig(n_rounds=2, batch_size=8, portion=0.25)  # 2 of each 8 images get delta


# ---------------------------------------------------------------------------------------------
# The hypergradient


def _quadratic_case():
    """Inner: 0.5 d'Ad - d'B theta (so d*(theta) = A^-1 B theta); outer couples d and theta."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(3, 3, generator=g, dtype=torch.float64)
    a = m @ m.T + torch.eye(3, dtype=torch.float64)
    b = torch.randn(3, 2, generator=g, dtype=torch.float64)
    c = torch.randn(3, generator=g, dtype=torch.float64)
    step = 1.0 / torch.linalg.eigvalsh(a).max().item()  # I - step * A has spectral radius < 1

    def outer(d, theta):
        return 0.5 * (d - c).pow(2).sum() + 0.3 * theta.pow(2).sum() + d.sum() * theta[0]

    def phi(d, theta):  # delta - step * grad_delta L_inner, differentiable in theta
        return d - step * (a @ d - b @ theta)

    return a, b, step, outer, phi


def test_hypergradient_matches_the_closed_form_and_finite_differences_on_a_quadratic():
    a, b, _, outer, phi = _quadratic_case()
    theta = torch.tensor([0.7, -1.2], dtype=torch.float64, requires_grad=True)
    d_star = torch.linalg.solve(a, b @ theta.detach())
    (hyper,), iterations = implicit_hypergradient(
        lambda d: outer(d, theta), lambda d: phi(d, theta), d_star, [theta], steps=400, tol=0.0
    )
    assert iterations == 400
    # Closed form: d_theta f + B' A^-1 d_delta f at d*.
    d = d_star.clone().requires_grad_(True)
    g_d, g_t = torch.autograd.grad(outer(d, theta), [d, theta])
    expected = g_t + b.T @ torch.linalg.solve(a, g_d)
    assert torch.allclose(hyper, expected, atol=1e-9)

    # Finite differences of theta -> f(d*(theta), theta).
    def total(t):
        return outer(torch.linalg.solve(a, b @ t), t)

    eps = 1e-6
    fd = torch.stack(
        [
            (total(theta.detach() + eps * e) - total(theta.detach() - eps * e)) / (2 * eps)
            for e in torch.eye(2, dtype=torch.float64)
        ]
    )
    assert torch.allclose(hyper, fd, atol=1e-6)


def test_truncated_hypergradient_is_the_k_term_neumann_sum_and_tol_stops_it():
    a, b, step, outer, phi = _quadratic_case()
    theta = torch.tensor([0.3, 0.5], dtype=torch.float64, requires_grad=True)
    d0 = torch.tensor([0.1, -0.2, 0.4], dtype=torch.float64)  # not the fixed point: the formula still holds
    (hyper,), iterations = implicit_hypergradient(
        lambda d: outer(d, theta), lambda d: phi(d, theta), d0, [theta], steps=3
    )
    d = d0.clone().requires_grad_(True)
    g_d, g_t = torch.autograd.grad(outer(d, theta), [d, theta])
    j = torch.eye(3, dtype=torch.float64) - step * a  # d_delta Phi (symmetric here)
    v = g_d + j.T @ g_d + j.T @ j.T @ g_d
    assert iterations == 3
    assert torch.allclose(hyper, g_t + (step * b).T @ v, atol=1e-12)
    # A zero outer gradient in delta converges at once: one iteration, plain d_theta f.
    (plain,), iterations = implicit_hypergradient(lambda d: (theta**2).sum(), lambda d: phi(d, theta), d0, [theta], 5)
    assert iterations == 1 and torch.allclose(plain, 2 * theta.detach())


def test_unlearn_step_follows_the_brute_force_hypergradient_of_ibau_losses():
    """A linear model on 2x2 images: explicit Jacobians of Phi = delta - 0.1 grad(-CE + reg |delta|^2)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    x, y = torch.rand(5, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    x0, y0 = torch.rand(4, 1, 2, 2, dtype=torch.float64), torch.tensor([2, 0, 1, 1])
    delta = 0.3 * torch.randn(1, 1, 2, 2, dtype=torch.float64)
    cfg = IBAUConfig(fixed_point_steps=4, portion=1.0, reg=0.05)
    names = [n for n, _ in model.named_parameters()]
    theta0 = torch.cat([p.detach().flatten() for p in model.parameters()])

    def unflat(t):
        shapes = [p.shape for p in model.parameters()]
        parts = t.split([s.numel() for s in shapes])
        return {n: part.view(s) for n, part, s in zip(names, parts, shapes)}

    def phi(d, t):
        def inner(dd):
            logits = functional_call(model, unflat(t), (x0 + dd.view(1, 1, 2, 2),))
            return -F.cross_entropy(logits, y0) + cfg.reg * dd.pow(2).sum()

        return d - cfg.inner_lr * torch.func.grad(inner)(d)

    def outer(d, t):
        return F.cross_entropy(functional_call(model, unflat(t), (x + d.view(1, 1, 2, 2),)), y)

    d_flat = delta.flatten()
    j_d, j_t = torch.autograd.functional.jacobian(phi, (d_flat, theta0))
    g_d, g_t = torch.autograd.functional.jacobian(outer, (d_flat, theta0))
    v = sum(torch.linalg.matrix_power(j_d.T, k) @ g_d for k in range(cfg.fixed_point_steps))
    expected = g_t + j_t.T @ v

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the step is exactly minus the gradient
    loss, iterations = ibau.unlearn_step(model, optimizer, delta, (x, y), (x0, y0), cfg, torch.Generator())
    moved = theta0 - torch.cat([p.detach().flatten() for p in model.parameters()])
    assert iterations == cfg.fixed_point_steps
    assert torch.allclose(moved, expected, atol=1e-10)
    assert torch.isclose(loss, outer(d_flat, theta0))


def test_no_patched_image_reduces_the_step_to_plain_cross_entropy():
    model = tiny_model(width=2)
    clean = noise_images(8, drawn_labels=True)
    x, y = clean.float(), clean.y
    plain = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    before = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    cfg = IBAUConfig(portion=0.1)  # int(8 * 0.1) = 0 images get delta
    _, iterations = ibau.unlearn_step(
        model, optimizer, torch.ones(1, 1, 16, 16), (x, y), (x, y), cfg, torch.Generator()
    )
    assert iterations == 1
    for p0, p1, g in zip(before.parameters(), model.parameters(), plain):
        assert torch.allclose(p0 - p1, g, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The perturbation


@pytest.mark.parametrize("linear", [True, False])
def test_fitted_perturbation_is_adversarial_on_the_clean_images(linear):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 3)) if linear else tiny_model(width=2).eval()
    clean = noise_images(48, drawn_labels=True)
    batches = ibau.clean_batches(clean, TINY, spec=SPEC, seed=0, purpose="test", device=torch.device("cpu"))
    delta, perturb_ce = ibau.fit_perturbation(model, batches, TINY)
    x = clean.float()
    with torch.no_grad():
        own = model(x).argmax(1)  # the fit's labels: the model's own predictions
        before = F.cross_entropy(model(x), own)
        after = F.cross_entropy(model(x + delta), own)
        flipped = (model(x + delta).argmax(1) != own).float().mean()
    assert delta.shape == (1, 1, 16, 16) and delta.abs().max() > 0
    assert perturb_ce > 0
    if linear:  # a strong input gradient: the universal delta flips most predictions
        assert after > before + 1.0 and flipped > 0.5, (float(before), float(after), float(flipped))
    else:  # a random width-2 network barely reacts to its input, but the loss still rises
        assert after > before, (float(before), float(after))


def test_universal_perturbation_is_the_defense_first_delta_and_leaves_the_model_alone():
    model, clean = tiny_model(width=2), noise_images(24, drawn_labels=True)
    state = copy.deepcopy(model.state_dict())
    delta = universal_perturbation(model, clean, TINY, spec=SPEC, seed=3)
    result = DEFENSES["ibau"](model, clean, TINY, spec=SPEC, seed=3)
    assert delta.shape == (1, 16, 16)
    assert float(delta.norm()) == pytest.approx(result.record["delta_l2"][0], rel=1e-6)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------
# Through the registry


def test_defense_runs_through_the_registry_without_touching_its_input():
    model, clean = tiny_model(width=2), noise_images(24, drawn_labels=True)
    model.train()  # the defense must neither switch the input's mode nor update its BN statistics
    state = copy.deepcopy(model.state_dict())
    result = DEFENSES["ibau"](model, clean, TINY, spec=SPEC, seed=0)
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert type(result.model) is type(model) and not result.model.training
    repaired = result.model.state_dict()
    assert any(not torch.equal(state[k], repaired[k]) for k in state if k.endswith("weight"))
    # BN running statistics are untouched: the model stays in eval mode during unlearning.
    assert all(torch.equal(state[k], repaired[k]) for k in state if "running" in k or "num_batches" in k)
    record = json.loads(json.dumps(result.record))
    assert record["rounds"] == 2 and len(record["delta_l2"]) == 2 and len(record["loss"]) == 2
    assert all(d > 0 for d in record["delta_l2"])
    assert [row["round"] for row in record["per_round"]] == [1, 2]
    assert record["config"]["fixed_point_steps"] == 5 and record["config"]["portion"] == 0.25


def test_defense_is_deterministic_for_a_seed():
    model, clean = tiny_model(width=2), noise_images(24, drawn_labels=True)
    first = DEFENSES["ibau"](model, clean, TINY, spec=SPEC, seed=1)
    second = DEFENSES["ibau"](model, clean, TINY, spec=SPEC, seed=1)
    other = DEFENSES["ibau"](model, clean, TINY, spec=SPEC, seed=2)
    assert first.record == second.record
    assert all(torch.equal(v, second.model.state_dict()[k]) for k, v in first.model.state_dict().items())
    assert first.record["delta_l2"] != other.record["delta_l2"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_rounds", 0),
        ("fixed_point_steps", 0),
        ("inner_lr", 0.0),
        ("perturb_lr", -1.0),
        ("reg", -0.1),
        ("portion", 1.5),
        ("outer_lr", 0.0),
        ("adam_betas", (0.9, 1.0)),
        ("batch_size", 0),
        ("augment", "yes"),
        ("tol", -1.0),
    ],
)
def test_bad_config_values_fail_naming_the_value(field, value):
    # a value of the wrong type or out of its range is named with the range (settings.check_ranges)
    with pytest.raises(ValueError, match=rf"{field}(=| must be .*, got ){re.escape(repr(value))}"):
        IBAUConfig(**{field: value})


def test_profiles_scale_the_rounds_only():
    assert IBAUConfig.for_profile(config.resolve("paper")) == IBAUConfig()
    quick = IBAUConfig.for_profile(config.resolve("quick"))
    assert quick.n_rounds == 1 and quick.fixed_point_steps == 5
    assert IBAUConfig.for_profile(config.resolve("smoke")).n_rounds == 1
    assert IBAUConfig.for_profile(config.resolve("quick"), n_rounds=3).n_rounds == 3
