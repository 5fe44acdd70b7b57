"""RNP: unlearning, mask recovery on the unlearned copy, pruning of the original; tiny models."""

import copy
import dataclasses
import json
import re

import pytest
import torch

from tsbd_utils import data
from tsbd_utils.config import PROFILES
from tsbd_utils.defenses import DEFENSES, OracleData, masks, pruning, rnp
from tsbd_utils.defenses.rnp import MultiStepAscent, RNPConfig

from .helpers import separable_images, tiny_model, tiny_spec

# Share 0.4 of 50 images = 20 (one batch per epoch); 10 thresholds instead of 19.
FAST = RNPConfig(clean_fraction=0.4, unlearning_epochs=3, recovering_epochs=3, batch_size=32, pruning_step=0.1)


def _run(model, clean, config=FAST, seed=0, **kwargs):
    return DEFENSES["rnp"](model, clean, config, spec=tiny_spec(), seed=seed, **kwargs)


def test_rnp_through_the_registry_prunes_a_copy_and_records_json():
    model, clean = tiny_model(), separable_images(50)
    before = copy.deepcopy(model.state_dict())
    result = _run(model, clean)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    out = result.model
    assert type(out) is type(model) and not out.training
    assert not any(isinstance(m, masks.MaskedBatchNorm2d) for m in out.modules())
    assert set(out.state_dict()) == set(before)
    record = json.loads(json.dumps(result.record))
    assert record["clean_images"] == 20 and record["recovery"]["epochs"] == 3
    assert 1 <= record["unlearning"]["epochs"] <= 3
    assert [row["amount"] for row in record["rows"]] == pruning.thresholds(0.9, 0.1)
    flat = masks.flat_masks(record["masks"])
    assert len(flat) == record["neurons"] and 0 <= flat.min() and flat.max() <= 1
    t = record["threshold"]
    assert record["pruned"] == int((flat < t).sum())
    for name, values in record["masks"].items():
        below = torch.tensor(values) < t
        weight = out.get_submodule(name).weight.detach()
        assert torch.equal(weight[below], torch.zeros(int(below.sum())))
        assert torch.equal(weight[~below], before[f"{name}.weight"][~below])  # the original's, not the unlearned


def test_rnp_is_deterministic_for_a_seed():
    model, clean = tiny_model(), separable_images(50)
    a, b = _run(model, clean), _run(model, clean)
    assert a.record == b.record
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_rnp_learns_on_the_first_share_of_the_clean_data_only():
    model, clean = tiny_model(), separable_images(50)
    base = rnp.unlearn_and_recover(model, clean, FAST, spec=tiny_spec(), seed=0)
    beyond = clean.x.clone()
    beyond[20:] = 255 - beyond[20:]  # every image after the share changes
    same = rnp.unlearn_and_recover(model, data.ImageData(beyond, clean.y), FAST, spec=tiny_spec(), seed=0)
    assert base[1] == same[1]
    assert all(torch.equal(v, same[0][k]) for k, v in base[0].items())
    inside = clean.x.clone()
    inside[:20] = 255 - inside[:20]
    changed = rnp.unlearn_and_recover(model, data.ImageData(inside, clean.y), FAST, spec=tiny_spec(), seed=0)
    assert any(not torch.equal(v, changed[0][k]) for k, v in base[0].items())


def test_unlearning_stops_at_the_first_epoch_at_or_under_the_threshold():
    model, clean = tiny_model(), separable_images(50)
    def learn(config):
        return rnp.unlearn_and_recover(model, clean, config, spec=tiny_spec(), seed=0)[1]

    stopped = learn(dataclasses.replace(FAST, clean_threshold=1.0))["unlearning"]
    assert stopped["epochs"] == 1 and stopped["reached"]
    never = learn(dataclasses.replace(FAST, clean_threshold=0.0, unlearning_epochs=3, milestones=(2,)))["unlearning"]
    assert never["epochs"] == 3 and not never["reached"]
    # MultiStepLR: the ascent lr drops by gamma after the milestone epoch.
    assert [e["lr"] for e in never["history"]] == pytest.approx([0.01, 0.01, 0.001])


def test_multistep_factor_follows_backdoorbenchs_milestones():
    step = MultiStepAscent((10, 20), 0.1)
    factors = []
    for epoch in (0, 9, 10, 19, 20):
        step.epoch = epoch
        factors.append(step.factor)
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_recovered_masks_stay_in_zero_one_and_alpha_only_scales_the_loss():
    model, clean = tiny_model(), separable_images(50)
    values, _ = rnp.unlearn_and_recover(model, clean, FAST, spec=tiny_spec(), seed=0)
    flat = masks.flat_masks(values)
    assert flat.min() < 1 and flat.min() >= 0 and flat.max() <= 1
    # alpha only scales the loss: alpha 0.4 with lr 0.1 takes the steps of alpha 0.2 with lr 0.2.
    doubled, _ = rnp.unlearn_and_recover(
        model, clean, dataclasses.replace(FAST, alpha=0.4, recovering_lr=0.1), spec=tiny_spec(), seed=0
    )
    for name, v in values.items():
        torch.testing.assert_close(doubled[name], v, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("clean_fraction", 0.0),
        ("unlearning_lr", 0.0),
        ("unlearning_epochs", 0),
        ("milestones", (0,)),
        ("clean_threshold", 1.5),
        ("recovering_epochs", 0),
        ("alpha", 0.0),
        ("pruning_step", -0.05),
        ("choice", "test"),
    ],
)
def test_bad_rnp_settings_fail_naming_the_value(field, value):
    with pytest.raises(ValueError, match=rf"RNPConfig\.{field} must be .+, got {re.escape(repr(value))}"):
        RNPConfig(**{field: value})


def test_a_share_too_small_fails():
    with pytest.raises(ValueError, match="clean_fraction"):
        RNPConfig(clean_fraction=0.01).share(separable_images(50))


def test_oracle_choice_needs_the_oracle_data_and_uses_it():
    model, clean = tiny_model(), separable_images(50)
    with pytest.raises(ValueError, match="oracle"):
        _run(model, clean, dataclasses.replace(FAST, choice="oracle"))
    test = separable_images(30, seed=3)
    oracle = OracleData(test.x, test.y, test.x.clone(), target=0)
    result = _run(model, clean, dataclasses.replace(FAST, choice="oracle"), oracle=oracle)
    assert all({"test_acc", "test_asr"} <= set(row) for row in result.record["rows"])


def test_profiles_keep_backdoorbenchs_epochs_except_smoke():
    for name in ("paper", "quick"):
        config = RNPConfig.for_profile(PROFILES[name])
        assert (config.unlearning_epochs, config.recovering_epochs) == (20, 20)
    smoke = RNPConfig.for_profile(PROFILES["smoke"])
    assert (smoke.unlearning_epochs, smoke.recovering_epochs) == (2, 2)
    assert RNPConfig.for_profile(PROFILES["quick"], alpha=0.5).alpha == 0.5
