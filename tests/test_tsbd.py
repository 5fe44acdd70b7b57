"""Observations (unlearning, NWC, activeness) and both TSBD stages, on small constructed cases."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

from tsbd_utils import data, observations, unlearning
from tsbd_utils.defenses import DEFENSES, ActivenessAwareStep, TSBDConfig, zero_reinit
from tsbd_utils.defenses.activeness import CopyingActivenessAwareStep
from tsbd_utils.training import Step

from .helpers import tiny_model, tiny_spec


class TwoConvs(nn.Module):
    """Two named conv layers (2 neurons of 1x2x2 weights each) and a shortcut NWC must skip."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 2, bias=False)
        self.b = nn.Conv2d(1, 2, 2, bias=False)
        self.shortcut = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False))


def _pair():
    original = TwoConvs()
    with torch.no_grad():
        for p in original.parameters():
            p.fill_(1.0)
    changed = copy.deepcopy(original)
    with torch.no_grad():
        # Neuron a0 changes by 4, -3, 2, -1 (NWC 10); a1 by 1 once (NWC 1);
        # b0 by 2.5, 1.5, 0.6, -0.4 (NWC 5); b1 by 0.5 once (NWC 0.5); the shortcut by 100.
        changed.a.weight[0] += torch.tensor([4.0, -3.0, 2.0, -1.0]).view(1, 2, 2)
        changed.a.weight[1, 0, 0, 0] += 1.0
        changed.b.weight[0] += torch.tensor([2.5, 1.5, 0.6, -0.4]).view(1, 2, 2)
        changed.b.weight[1, 0, 1, 1] -= 0.5
        changed.shortcut[0].weight += 100.0
    return original, changed


def test_nwc_is_the_l1_norm_of_each_output_channels_change_without_shortcuts():
    original, changed = _pair()
    assert observations.nwc_layers(original) == ["a", "b"]
    nwc = observations.neuron_weight_change(original, changed)
    assert list(nwc) == ["a", "b"]
    assert torch.allclose(nwc["a"], torch.tensor([10.0, 1.0]))
    assert torch.allclose(nwc["b"], torch.tensor([5.0, 0.5]))
    with pytest.raises(ValueError, match=r"nope.*allowed: \[.a., .b.\]"):
        observations.neuron_weight_change(original, changed, layers=["a", "nope"])


def test_zero_reinit_zeroes_exactly_the_top_changes_of_the_top_neurons_in_the_original():
    original, changed = _pair()
    # n = 0.5 of 4 neurons -> a0 and b0. Their 8 changes; m = 0.5 -> top 4 (4, 3, 2.5, 2): threshold 2.
    reinit, record = zero_reinit(original, changed, neuron_ratio=0.5, weight_ratio=0.5)
    expected_a = torch.ones(2, 1, 2, 2)
    expected_a[0, 0, 0, 0] = expected_a[0, 0, 0, 1] = expected_a[0, 0, 1, 0] = 0.0
    expected_b = torch.ones(2, 1, 2, 2)
    expected_b[0, 0, 0, 0] = 0.0
    assert torch.equal(reinit.a.weight, expected_a)
    assert torch.equal(reinit.b.weight, expected_b)
    assert torch.equal(reinit.shortcut[0].weight, original.shortcut[0].weight)
    assert record["neurons"] == 2 and record["zeroed_weights"] == 4 and record["threshold"] == 2.0
    assert record["layers"] == {"a": {"neurons": 1, "zeroed_weights": 3}, "b": {"neurons": 1, "zeroed_weights": 1}}
    assert torch.equal(original.a.weight, torch.ones(2, 1, 2, 2))  # inputs untouched
    # n = 1, m = 1: every changed weight of every neuron goes (the unchanged ones too: |dw| = 0 >= min).
    everything, _ = zero_reinit(original, changed, 1.0, 1.0)
    assert float(everything.a.weight.detach().abs().sum()) == 0.0
    nothing, record = zero_reinit(original, changed, 0.0, 0.7)
    assert torch.equal(nothing.a.weight, original.a.weight) and record["zeroed_weights"] == 0
    with pytest.raises(ValueError, match="neuron_ratio 1.5"):
        zero_reinit(original, changed, 1.5)


def _batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 2, (n,), generator=g)


def _one_step(step, lr=0.1, seed=0):
    model = tiny_model(width=2).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x, y = _batch(seed)
    step(model, x, y, optimizer)
    return model, optimizer


def _same_state(a, b, **tol):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.allclose(sa[k].float(), sb[k].float(), **tol) for k in sa)


@pytest.mark.parametrize("radius, alpha", [(0.05, 0.0), (0.0, 0.7)])
def test_activeness_aware_step_with_alpha_0_or_r_0_is_a_plain_sgd_step(radius, alpha):
    plain, _ = _one_step(Step())
    aware, _ = _one_step(ActivenessAwareStep(radius, alpha))
    assert _same_state(plain, aware, atol=1e-6, rtol=1e-5)
    moved, _ = _one_step(ActivenessAwareStep(0.5, 0.7))  # and with both on, the update does differ
    assert not _same_state(plain, moved, atol=1e-6, rtol=1e-5)


def test_perturbed_pass_leaves_bn_statistics_and_weights_as_they_were():
    # lr 0: the step changes nothing but BN running statistics, which only the first pass may update.
    before = tiny_model(width=2).state_dict()
    plain, _ = _one_step(Step(), lr=0.0)
    aware, _ = _one_step(ActivenessAwareStep(0.5, 0.7), lr=0.0)
    for key, value in aware.state_dict().items():
        assert torch.equal(value, plain.state_dict()[key]), key
    assert any(not torch.equal(before[k], plain.state_dict()[k]) for k in before if "running_mean" in k)
    assert all(m.track_running_stats for m in aware.modules() if isinstance(m, nn.BatchNorm2d))


def test_in_place_step_matches_the_copy_per_batch_formulation():
    for seed in range(3):
        in_place, _ = _one_step(ActivenessAwareStep(0.05, 0.7), seed=seed)
        copying, _ = _one_step(CopyingActivenessAwareStep(0.05, 0.7), seed=seed)
        assert _same_state(in_place, copying, atol=1e-6, rtol=1e-5)


def test_the_official_formulation_moves_the_weights_as_the_in_place_step_and_refreshes_bn_after_the_step():
    from tsbd_utils.defenses.activeness import OfficialActivenessAwareStep

    for seed in range(3):
        in_place, _ = _one_step(ActivenessAwareStep(0.05, 0.7), seed=seed)
        official, _ = _one_step(OfficialActivenessAwareStep(0.05, 0.7), seed=seed)
        weights = dict(official.named_parameters())
        for name, p in in_place.named_parameters():
            assert torch.allclose(p, weights[name], atol=1e-6, rtol=1e-5), name
        # Its BN statistics come from the third forward, after the step: not those of the in-place step's first pass.
        buffers = dict(official.named_buffers())
        assert any(not torch.allclose(b, buffers[n]) for n, b in in_place.named_buffers() if "running_mean" in n)


def _scripted(values):
    it = iter(values)
    return lambda model: next(it)


def test_unlearning_stops_at_the_first_epoch_at_or_under_the_threshold(tiny_images):
    x, y = tiny_images
    clean = data.ImageData(x, y)
    model = tiny_model(width=2)
    run = unlearning.unlearn(
        model, clean, _scripted([0.5, 0.2, 0.1, 0.0]), 0.1, metric="acc", spec=tiny_spec(), seed=0, max_epochs=10
    )
    assert run.epochs == 3 and run.reached and [e["acc"] for e in run.history.epochs] == [0.5, 0.2, 0.1]
    capped = unlearning.unlearn(
        model, clean, _scripted([0.9] * 5), 0.1, metric="acc", spec=tiny_spec(), seed=0, max_epochs=4
    )
    assert capped.epochs == 4 and not capped.reached
    assert _same_state(model, tiny_model(width=2), atol=0, rtol=0)  # the input model is untouched


def test_a_diverging_unlearning_stops_at_its_last_finite_epoch(tiny_images):
    x, y = tiny_images
    model = tiny_model(width=2)
    kept = {}

    def monitor(m):  # after epoch 2, overflow one weight: epoch 3's ascent then leaves NaN everywhere
        kept.setdefault("calls", 0)
        kept["calls"] += 1
        if kept["calls"] == 2:
            kept["state"] = copy.deepcopy(m.state_dict())
            with torch.no_grad():
                m.linear.weight[0, 0] = float("inf")
        return 0.9

    run = unlearning.unlearn(
        model, data.ImageData(x, y), monitor, 0.1, metric="acc", spec=tiny_spec(), seed=0, max_epochs=10
    )
    assert run.diverged and not run.reached and kept["calls"] == 2  # epoch 3 ended non-finite: stopped there
    assert run.epochs == 2 and len(run.history.seconds) == 2  # the diverged epoch is not counted
    assert unlearning.finite_state(run.model)
    assert all(torch.equal(v, kept["state"][k]) for k, v in run.model.state_dict().items())


def test_a_real_ascent_that_overflows_is_caught_not_run_to_the_cap(tiny_images):
    x, y = tiny_images
    wild = unlearning.UnlearnConfig(lr=1e6, batch_size=16)  # no floor on the loss: the weights overflow
    run = unlearning.clean_unlearn(
        tiny_model(width=2), data.ImageData(x, y), spec=tiny_spec(), seed=0, config=wild, max_epochs=200
    )
    assert run.diverged and run.epochs < 200 and unlearning.finite_state(run.model)
    calm = unlearning.clean_unlearn(
        tiny_model(width=2), data.ImageData(x, y), spec=tiny_spec(), seed=0,
        config=unlearning.UnlearnConfig(lr=0.05, batch_size=16), max_epochs=50,
    )
    assert not calm.diverged and calm.reached


def test_clean_and_poison_unlearning_stop_where_their_rules_say(tiny_images):
    x, y = tiny_images
    model = tiny_model(width=2)
    fast = unlearning.UnlearnConfig(lr=0.05, batch_size=16)
    run = unlearning.clean_unlearn(model, data.ImageData(x, y), spec=tiny_spec(), seed=0, config=fast, max_epochs=50)
    accs = [e["clean_acc"] for e in run.history.epochs]
    assert run.reached and accs[-1] <= 0.10 and all(a > 0.10 for a in accs[:-1])
    poison = unlearning.poison_unlearn(
        model, x, 1, spec=tiny_spec(), seed=0, config=dataclasses.replace(fast, augment=False), max_epochs=50
    )
    asrs = [e["asr"] for e in poison.history.epochs]
    assert poison.reached and asrs[-1] <= 0.05 and all(a > 0.05 for a in asrs[:-1])
    with pytest.raises(ValueError, match="uint8"):
        unlearning.poison_unlearn(model, x.float(), 1, spec=tiny_spec(), seed=0)


def test_activeness_records_one_norm_per_output_channel(tiny_images):
    x, y = tiny_images
    model = tiny_model(width=2)
    act = observations.activeness(model, data.ImageData(x, y), spec=tiny_spec(), seed=0)
    assert act.layer == "layer4.1.conv2" and act.mean.shape == (16,) and act.var.shape == (16,)
    assert bool((act.mean > 0).all()) and bool((act.var >= 0).all())
    first = observations.activeness(model, data.ImageData(x, y), spec=tiny_spec(), seed=0, layer="conv1")
    assert first.mean.shape == (2,)
    with pytest.raises(ValueError, match="layer4.1.conv2"):
        observations.activeness(model, data.ImageData(x, y), spec=tiny_spec(), seed=0, layer="linear")


def test_correlation_and_top_k_overlap():
    x = torch.arange(1.0, 21.0)
    r = observations.correlation(x, x**3)
    assert r["spearman"] == pytest.approx(1.0) and 0.8 < r["pearson"] < 0.99
    assert observations.correlation(x, -x)["pearson"] == pytest.approx(-1.0)
    assert observations.top_k_overlap(x, x, 5) == 1.0
    assert observations.top_k_overlap(x, -x, 5) == 0.0
    with pytest.raises(ValueError, match="k=30"):
        observations.top_k_overlap(x, x, 30)


def test_tsbd_through_the_registry_leaves_the_input_model_alone(tiny_images):
    x, y = tiny_images
    model = tiny_model(width=2)
    before = copy.deepcopy(model.state_dict())
    config = TSBDConfig(neuron_ratio=0.3, epochs=2, unlearn=unlearning.UnlearnConfig(lr=0.05, max_epochs=3))
    result = DEFENSES["tsbd"](model, data.ImageData(x, y), config, spec=tiny_spec(), seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(result.model) is type(model)
    record = result.record
    assert 1 <= record["unlearn_epochs"] <= 3 and record["unlearn_diverged"] is False
    assert len(record["stage2"]["epochs"]) == 2
    assert record["stage1"]["neurons"] == int(0.3 * record["stage1"]["total_neurons"]) > 0
    assert record["stage1"]["zeroed_weights"] > 0
    with pytest.raises(ValueError, match=r"TSBDConfig\.alpha must be in \[0, 1\], got 2$"):
        TSBDConfig(alpha=2)


def test_the_n_rule_takes_the_smallest_ratio_that_costs_a_third_of_the_clean_accuracy():
    from tsbd_utils.defenses.reinit import choose_neuron_ratio

    curve = {0.1: 0.85, 0.2: 0.62, 0.25: 0.55, 0.3: 0.40}
    assert choose_neuron_ratio(curve, before=0.9) == 0.25  # 2/3 x 0.9 = 0.6
    assert choose_neuron_ratio(curve, before=0.93) == 0.2  # 0.62 <= 0.62
    assert choose_neuron_ratio({0.1: 0.9, 0.5: 0.8}, before=0.9) == 0.5  # none qualifies: the largest
    with pytest.raises(ValueError, match="no candidate"):
        choose_neuron_ratio({}, before=0.9)


def test_tsbd_config_follows_the_profile():
    from tsbd_utils.config import resolve

    smoke, quick, paper = (TSBDConfig.for_profile(resolve(p)) for p in ("smoke", "quick", "paper"))
    assert (smoke.epochs, quick.epochs, paper.epochs) == (2, 21, 21)
    assert quick.neuron_ratio == 0.25 and quick.weight_ratio == 0.7
    assert resolve("quick", tsbd_neuron_ratio=0.3).tsbd_neuron_ratio == 0.3
    assert TSBDConfig.for_profile(resolve("quick", tsbd_neuron_ratio=0.3)).neuron_ratio == 0.3
    assert (quick.unlearn.max_epochs, paper.unlearn.max_epochs) == (200, 1000)
    assert (quick.radius, quick.alpha, quick.lr, quick.momentum, quick.batch_size) == (0.05, 0.7, 0.01, 0.9, 256)
    assert TSBDConfig.for_profile(resolve("quick"), alpha=0.0).alpha == 0.0


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_notebooks_zoo_and_direct_calls_get_one_setting(profile):
    """Profile-dependent values live in the profile: the zoo (notebooks), the defense's own for_profile and the
    config registry give TSBD and ANP the same settings."""
    from tsbd_utils import zoo
    from tsbd_utils.config import PROFILES
    from tsbd_utils.defenses import ANPConfig, config_for
    from tsbd_utils.unlearning import UnlearnConfig

    p = PROFILES[profile]
    tsbd = TSBDConfig.for_profile(p)
    assert tsbd == config_for("tsbd", p)
    assert tsbd.unlearn == zoo.unlearn_config(p, "clean") == UnlearnConfig.for_profile(p)
    assert (tsbd.unlearn.lr, tsbd.unlearn.max_epochs, tsbd.neuron_ratio) == (p.unlearn_lr, p.unlearn_cap,
                                                                              p.tsbd_neuron_ratio)
    poison = zoo.unlearn_config(p, "poison")
    assert (poison.lr, poison.max_epochs, poison.augment) == (p.unlearn_lr, p.unlearn_cap, False)
    assert ANPConfig.for_profile(p) == config_for("anp", p)
    with pytest.raises(ValueError, match="allowed: clean, poison"):
        UnlearnConfig.for_profile(p, "dirty")


def test_top_neurons_ranks_all_layers_together():
    from tsbd_utils.defenses.reinit import top_neurons

    nwc = {"a": torch.tensor([5.0, 1.0, 3.0]), "b": torch.tensor([4.0, 0.5])}
    assert top_neurons(nwc, 0.6) == {"a": [0, 2], "b": [0]}  # int(0.6 * 5) = 3: 5, 4, 3
    assert top_neurons(nwc, 0.0) == {"a": [], "b": []}
    with pytest.raises(ValueError, match="neuron_ratio 1.5 must be in"):
        top_neurons(nwc, 1.5)
