"""ANP and the shared BatchNorm-mask machinery (masks.py), on tiny models."""

import copy
import dataclasses
import json
import re

import pytest
import torch
from torch import nn

from tsbd_utils import models
from tsbd_utils.config import PROFILES
from tsbd_utils.defenses import DEFENSES, OracleData, anp, masks, pruning
from tsbd_utils.defenses.anp import ANPConfig

from .helpers import separable_images, tiny_model, tiny_spec

FAST = ANPConfig(iterations=4, batch_size=16, lr=0.2, pruning_step=0.1)  # 10 thresholds: 0, 0.1, ..., 0.9


def _run(model, clean, config=FAST, **kwargs):
    return DEFENSES["anp"](model, clean, config, spec=tiny_spec(), seed=0, **kwargs)


def _bn(seed=0, n=5):
    bn = nn.BatchNorm2d(n)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(n, generator=g))
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return bn


@pytest.mark.parametrize("noise", [False, True])
def test_masked_bn_with_mask_one_and_zero_noise_is_plain_bn(noise):
    x = torch.randn(8, 5, 4, 4)
    for train in (True, False):
        plain = _bn().train(train)
        masked = masks.MaskedBatchNorm2d.from_batchnorm(plain, noise=noise)
        masked.perturbed = noise  # zero noise, switched on, changes nothing either
        assert masked.training == train
        torch.testing.assert_close(masked(x), plain(x), rtol=0, atol=1e-6)
        # Same running-statistics bookkeeping as nn.BatchNorm2d.
        torch.testing.assert_close(masked.running_mean, plain.running_mean)
        torch.testing.assert_close(masked.running_var, plain.running_var)
        assert int(masked.num_batches_tracked) == int(plain.num_batches_tracked)


def test_masked_bn_scales_the_weight_by_mask_plus_noise_and_the_bias_by_one_plus_noise():
    plain = _bn().eval()
    masked = masks.MaskedBatchNorm2d.from_batchnorm(plain, noise=True).eval()
    with torch.no_grad():
        masked.neuron_mask.copy_(torch.tensor([1.0, 0.5, 0.0, 0.25, 1.0]))
        masked.neuron_noise.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0, -0.4]))
        masked.neuron_noise_bias.copy_(torch.tensor([0.4, 0.0, -0.1, 0.2, 0.3]))
    x = torch.randn(3, 5, 2, 2)
    xhat = (x - plain.running_mean.view(1, -1, 1, 1)) / (plain.running_var.view(1, -1, 1, 1) + plain.eps).sqrt()
    def view(t):
        return t.view(1, -1, 1, 1)

    w, b = plain.weight.detach(), plain.bias.detach()
    masked.perturbed = False
    expected = xhat * view(w * masked.neuron_mask.detach()) + view(b)
    torch.testing.assert_close(masked(x), expected)
    masked.perturbed = True
    noisy_w = w * (masked.neuron_mask + masked.neuron_noise).detach()
    expected = xhat * view(noisy_w) + view(b * (1 + masked.neuron_noise_bias.detach()))
    torch.testing.assert_close(masked(x), expected)


def test_attach_masks_keeps_the_class_and_module_names_and_scales_each_neuron_by_its_mask():
    model = tiny_model().eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    x = torch.rand(4, 1, 16, 16)
    plain_out = model(x)
    layers = masks.attach_masks(model)
    assert list(layers) == names and type(model) is models.PreActResNet18
    assert all(isinstance(model.get_submodule(n), masks.MaskedBatchNorm2d) for n in names)
    torch.testing.assert_close(model(x), plain_out)  # masks start at one: the same function
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in layers.values():
            m.neuron_mask.copy_(torch.rand(m.num_features, generator=g))
    folded = tiny_model().eval()  # the same weights with each mask multiplied into its BN weight
    folded.load_state_dict({k: v for k, v in model.state_dict().items() if "neuron_" not in k})
    with torch.no_grad():
        for n, m in layers.items():
            folded.get_submodule(n).weight.mul_(m.neuron_mask)
    torch.testing.assert_close(model(x), folded(x))


def test_prune_neurons_zeroes_exactly_the_neurons_whose_mask_is_below_the_threshold():
    model = tiny_model()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(2.0)
    before = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(0)
    values = {
        n: torch.rand(m.num_features, generator=g) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
    }
    values["layer1.0.bn1"][:2] = torch.tensor([0.3, 0.29999])  # exactly at the threshold: kept
    count = masks.prune_neurons(model, values, 0.3)
    assert count == sum(int((v < 0.3).sum()) for v in values.values()) > 0
    state = model.state_dict()
    for name, v in values.items():
        assert torch.equal(state[f"{name}.weight"] == 0, v < 0.3)
        assert torch.equal(state[f"{name}.bias"], before[f"{name}.bias"])  # the bias stays
    assert state["layer1.0.bn1.weight"][0] == 2.0 and state["layer1.0.bn1.weight"][1] == 0.0
    with pytest.raises(ValueError, match="nope"):
        masks.prune_neurons(model, {"nope": torch.ones(3)}, 0.5)


def test_thresholds_are_backdoorbenchs_sweep():
    config = ANPConfig()
    t = pruning.thresholds(config.pruning_max, config.pruning_step)
    assert len(t) == 19 and t[0] == 0.0 and t[-1] == 0.9 and t[1] == 0.05
    assert pruning.thresholds(0.9, 0.2) == [0.0, 0.2, 0.4, 0.6, 0.8]


def test_anp_through_the_registry_prunes_a_copy_and_records_json():
    model, clean = tiny_model(), separable_images(40)
    before = copy.deepcopy(model.state_dict())
    result = _run(model, clean)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    out = result.model
    assert type(out) is type(model) and not out.training
    assert not any(isinstance(m, masks.MaskedBatchNorm2d) for m in out.modules())
    assert set(out.state_dict()) == set(before)
    record = json.loads(json.dumps(result.record))
    assert [row["amount"] for row in record["rows"]] == pruning.thresholds(0.9, 0.1)
    assert record["rows"][0]["pruned"] == 0 and record["neurons"] == len(masks.flat_masks(record["masks"]))
    assert record["iterations"] == 4 and [e["iteration"] for e in record["log"]] == [1, 2, 3, 4]
    flat = masks.flat_masks(record["masks"])
    assert 0 <= flat.min() and flat.max() <= 1 and flat.min() < 1  # the masks moved, within [0, 1]
    # The returned model is the original with exactly the neurons below the threshold zeroed.
    t, zeroed = record["threshold"], 0
    for name, values in record["masks"].items():
        below = torch.tensor(values) < t
        weight = out.get_submodule(name).weight.detach()
        assert torch.equal(weight[below], torch.zeros(int(below.sum())))
        assert torch.equal(weight[~below], before[f"{name}.weight"][~below])
        zeroed += int(below.sum())
    assert zeroed == record["pruned"]


def test_anp_is_deterministic_for_a_seed():
    model, clean = tiny_model(), separable_images(40)
    a, b = _run(model, clean), _run(model, clean)
    assert a.record == b.record
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    c = DEFENSES["anp"](model, clean, FAST, spec=tiny_spec(), seed=1)
    assert c.record["masks"] != a.record["masks"]


def test_anp_noise_enters_the_mask_loss_only_through_one_minus_alpha():
    model, clean = tiny_model(), separable_images(40)
    def learn(config):
        return anp.learn_masks(model, clean, config, spec=tiny_spec(), seed=0)[0]

    natural_only = learn(dataclasses.replace(FAST, alpha=1.0, eps=0.0))
    # alpha 1: the loss under noise has weight 0, so the noise cannot change the masks.
    assert all(torch.equal(v, natural_only[k]) for k, v in learn(dataclasses.replace(FAST, alpha=1.0)).items())
    robust = learn(FAST)
    assert any(not torch.equal(v, natural_only[k]) for k, v in robust.items())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eps", -0.1),
        ("steps", 0),
        ("alpha", 1.5),
        ("iterations", 0),
        ("batch_size", 1),
        ("pruning_step", 0.0),
        ("pruning_max", 2.0),
        ("choice", "best"),
        ("oracle_rule", "median"),
    ],
)
def test_bad_anp_settings_fail_naming_the_value(field, value):
    with pytest.raises(ValueError, match=rf"ANPConfig\.{field} must be .+, got {re.escape(repr(value))}"):
        ANPConfig(**{field: value})


def test_oracle_choice_needs_the_oracle_data_and_uses_it():
    model, clean = tiny_model(), separable_images(40)
    with pytest.raises(ValueError, match="oracle"):
        _run(model, clean, dataclasses.replace(FAST, choice="oracle"))
    test = separable_images(30, seed=3)
    oracle = OracleData(test.x, test.y, test.x.clone(), target=0)
    result = _run(model, clean, dataclasses.replace(FAST, choice="oracle"), oracle=oracle)
    assert all({"test_acc", "test_asr"} <= set(row) for row in result.record["rows"])


def test_profiles_scale_the_iterations():
    assert ANPConfig.for_profile(PROFILES["paper"]).iterations == 2000
    assert ANPConfig.for_profile(PROFILES["quick"]).iterations == 40  # Profile.anp_iterations
    assert ANPConfig.for_profile(PROFILES["smoke"]).iterations == 2
    assert ANPConfig.for_profile(PROFILES["quick"], choice="oracle").choice == "oracle"
