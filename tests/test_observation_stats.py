"""The statistics behind Observations 1 and 2: per-layer and standardized correlations, the layer-preserving
top-k baseline, log-scale correlation and a model's starting loss."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from torch import nn

from tsbd_utils import observation_stats, observations, plotting
from tsbd_utils.data import ImageData


def _scale_only_layers(seed: int = 0, size: int = 400) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two layers whose within-layer values are independent between the runs, but whose scales differ by 1000x."""
    g = torch.Generator().manual_seed(seed)
    x = {"small": 1 + torch.rand(size, generator=g), "large": 1000 * (1 + torch.rand(size, generator=g))}
    y = {"small": 1 + torch.rand(size, generator=g), "large": 1000 * (1 + torch.rand(size, generator=g))}
    return x, y


def test_standardizing_removes_a_pure_between_layer_scale_effect():
    x, y = _scale_only_layers()
    flat_x, _ = observations.flatten_layers(x)
    flat_y, _ = observations.flatten_layers(y)
    raw = observations.correlation(flat_x, flat_y)
    standardized = observation_stats.standardized_correlation(x, y)
    assert raw["pearson"] > 0.9 and raw["spearman"] > 0.7  # the pooled r sees only that one layer is larger
    assert abs(standardized["pearson"]) < 0.1 and abs(standardized["spearman"]) < 0.1
    per_layer = observation_stats.per_layer_correlation(x, y)
    assert list(per_layer) == ["small", "large"]
    assert all(abs(r[c]) < 0.15 for r in per_layer.values() for c in ("pearson", "spearman"))


def test_standardizing_keeps_a_within_layer_relation():
    g = torch.Generator().manual_seed(1)
    x = {"a": torch.rand(300, generator=g), "b": 50 * torch.rand(300, generator=g)}
    y = {name: 3 * v + 0.01 * torch.rand(v.shape, generator=g) for name, v in x.items()}
    assert observation_stats.standardized_correlation(x, y)["pearson"] > 0.99
    per_layer = observation_stats.per_layer_correlation(x, y)
    assert all(r["spearman"] > 0.99 for r in per_layer.values())


def test_standardized_layers_have_mean_zero_and_unit_std():
    z = observation_stats.standardize_per_layer({"a": torch.tensor([1.0, 2.0, 3.0, 6.0]), "c": torch.full((3,), 5.0)})
    assert abs(float(z["a"].mean())) < 1e-12 and abs(float(z["a"].std(unbiased=False)) - 1) < 1e-12
    assert torch.equal(z["c"], torch.zeros(3, dtype=torch.float64))  # a constant layer: no spread to scale


def test_per_layer_correlation_marks_a_constant_layer_as_nan_and_checks_the_layers():
    x = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.ones(3)}
    y = {"a": torch.tensor([2.0, 4.0, 7.0]), "b": torch.tensor([1.0, 2.0, 3.0])}
    r = observation_stats.per_layer_correlation(x, y)
    assert r["a"]["spearman"] == pytest.approx(1.0) and math.isnan(r["b"]["pearson"])
    with pytest.raises(ValueError, match="same layers"):
        observation_stats.per_layer_correlation(x, {"b": y["b"], "a": y["a"]})
    with pytest.raises(ValueError, match="shapes differ"):
        observation_stats.per_layer_correlation(x, {"a": torch.ones(4), "b": y["b"]})


def test_log_correlation_matches_a_power_law_and_drops_non_positive_pairs():
    g = torch.Generator().manual_seed(2)
    x = 10 ** (4 * torch.rand(500, generator=g) - 2)  # four orders of magnitude
    y = x**3
    r = observation_stats.log_correlation(x, y)
    assert r["pearson"] == pytest.approx(1.0) and r["spearman"] == pytest.approx(1.0) and r["kept"] == 500
    assert observations.correlation(x, y)["pearson"] < 0.9  # on raw values the same relation looks weaker
    x0, y0 = torch.cat([x, torch.zeros(3)]), torch.cat([y, torch.tensor([1.0, 2.0, 3.0])])
    assert observation_stats.log_correlation(x0, y0)["kept"] == 500


def test_layer_preserving_baseline_is_k_over_n_for_one_layer():
    g = torch.Generator().manual_seed(3)
    x, y = {"only": torch.rand(200, generator=g)}, {"only": torch.rand(200, generator=g)}
    for k in (1, 20, 50, 200):
        assert observation_stats.layer_preserving_overlap(x, y, k) == pytest.approx(k / 200)
    draws = observation_stats.shuffled_overlaps(x, y, 20, seed=0, draws=400)
    assert draws.shape == (400,) and abs(float(draws.mean()) - 0.1) < 0.015


def test_layer_preserving_baseline_exceeds_k_over_n_when_top_neurons_share_a_small_layer():
    g = torch.Generator().manual_seed(4)
    # 10 neurons in a layer that moves far more than the other 90, in both runs: every top-10 neuron is there.
    x = {"big": 100 + torch.rand(10, generator=g), "rest": torch.rand(90, generator=g)}
    y = {"big": 100 + torch.rand(10, generator=g), "rest": torch.rand(90, generator=g)}
    assert observation_stats.top_k_layer_counts(x, 10) == {"big": 10, "rest": 0}
    assert observation_stats.layer_preserving_overlap(x, y, 10) == pytest.approx(1.0)  # versus k/N = 0.1
    # Half of the top-20 share a 20-neuron layer: a_l = c_l = 10 there, 10 / 80 elsewhere.
    x = {"big": torch.cat([100 + torch.rand(10, generator=g), torch.rand(10, generator=g)]),
         "rest": torch.cat([50 + torch.rand(10, generator=g), torch.rand(70, generator=g)])}
    y = {name: v[torch.randperm(v.numel(), generator=g)] for name, v in x.items()}
    expected = (10 * 10 / 20 + 10 * 10 / 80) / 20
    assert observation_stats.layer_preserving_overlap(x, y, 20) == pytest.approx(expected)
    assert expected > 20 / 100
    draws = observation_stats.shuffled_overlaps(x, y, 20, seed=1, draws=400)
    assert abs(float(draws.mean()) - expected) < 0.02


def test_shuffled_overlaps_are_seeded():
    x, y = _scale_only_layers(5, 50)
    a = observation_stats.shuffled_overlaps(x, y, 10, seed=7, draws=20)
    assert torch.equal(a, observation_stats.shuffled_overlaps(x, y, 10, seed=7, draws=20))
    assert not torch.equal(a, observation_stats.shuffled_overlaps(x, y, 10, seed=8, draws=20))
    with pytest.raises(ValueError, match="draws"):
        observation_stats.shuffled_overlaps(x, y, 10, seed=7, draws=0)


def test_loss_and_accuracy_scores_a_fixed_linear_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[10.0, 0, 0, 0], [0, 0, 0, 10.0]]))
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    x[0, 0, 0, 0] = x[1, 0, 0, 0] = 255  # class 0 for images 0 and 1
    x[2, 0, 1, 1] = x[3, 0, 1, 1] = 255  # class 1 for images 2 and 3
    y = torch.tensor([0, 0, 1, 0])  # image 3 mislabelled
    model.train()
    out = observation_stats.loss_and_accuracy(model, ImageData(x, y), target=0, batch_size=3)
    assert model.training  # mode restored
    assert out["acc"] == pytest.approx(0.75) and out["target_acc"] == pytest.approx(2 / 3)
    small, large = math.log1p(math.exp(-10)), math.log1p(math.exp(10))
    assert out["loss"] == pytest.approx((3 * small + large) / 4)


def test_correlation_heatmap_draws_every_finite_cell():
    table = pd.DataFrame([[0.5, -0.2, float("nan")], [1.0, 0.0, -1.0]], index=["a", "b"], columns=["x", "y", "z"])
    fig, ax = plt.subplots()
    image = plotting.correlation_heatmap(ax, table, title="t", xlabel="layer", ylabel="attack")
    assert image.get_clim() == (-1, 1) and len(ax.texts) == 5
    plt.close(fig)


def test_ratio_axis_labels_plain_ratios_on_a_log_scale():
    fig, ax = plt.subplots()
    ax.bar(["a", "b"], [3.0 - 1, 0.4 - 1], bottom=1)  # bars grow from x1, up or down
    ticks = plotting.ratio_axis(ax)
    assert ax.get_yscale() == "log" and 1 in ticks and 2 in ticks and 0.5 in ticks
    assert ax.yaxis.get_major_formatter()(2, 0) == "x2"
    fig2, ax2 = plt.subplots()
    ax2.plot([0, 1], [0.95, 1.08])  # a narrow range still gets at least three ticks
    assert len(plotting.ratio_axis(ax2)) >= 3
    with pytest.raises(ValueError, match="axis"):
        plotting.ratio_axis(ax2, "z")
    plt.close(fig)
    plt.close(fig2)
