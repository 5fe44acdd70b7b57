"""Every defense through the registry on a tiny model, plus FT, FP, NAD and CLP specifics."""

import json

import pytest
import torch
from torch import nn

from tsbd_utils import config, data
from tsbd_utils.defenses import DEFENSE_CONFIGS, DEFENSES, OracleData, common, config_for, nad
from tsbd_utils.defenses.clp import CLPConfig, channel_lipschitz
from tsbd_utils.defenses.common import scaled_epochs, select_amount
from tsbd_utils.defenses.fp import FPConfig, head_inputs
from tsbd_utils.defenses.nad import NADConfig, attention_loss, attention_map
from tsbd_utils.registry import UnknownNameError

from .helpers import separable_images, tiny_model, tiny_spec

NINE = ("tsbd", "ft", "fp", "nad", "nc", "anp", "clp", "ibau", "rnp")
SMOKE = config.PROFILES["smoke"]


def test_the_registry_holds_the_nine_defenses_and_an_unknown_name_lists_them():
    assert sorted(DEFENSES) == sorted(NINE)
    with pytest.raises(UnknownNameError) as err:
        DEFENSES["fine-prune"]
    for name in NINE:
        assert name in str(err.value)
    with pytest.raises(UnknownNameError, match="fine-prune"):
        config_for("fine-prune", SMOKE)


@pytest.mark.parametrize("name", NINE)
def test_every_defense_runs_through_the_registry_and_leaves_its_input_alone(name):
    model = tiny_model(10)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clean = separable_images(100, 10, noise=60, step=19)
    result = DEFENSES[name](model, clean, config_for(name, SMOKE), spec=tiny_spec(), seed=0, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(result.model) is type(model)
    assert {k: v.shape for k, v in result.model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert result.model(torch.rand(2, 1, 16, 16)).shape == (2, 10)
    assert not result.model.training
    assert isinstance(result.record, dict) and result.record
    json.dumps(result.record)  # JSON-able, as the cache and results files need


def test_profiles_scale_the_baselines_epochs():
    assert config_for("ft", config.PROFILES["paper"]).finetune.epochs == 100
    assert config_for("ft", config.PROFILES["quick"]).finetune.epochs == 10
    assert config_for("ft", SMOKE).finetune.epochs == 2
    assert config_for("nad", config.PROFILES["paper"]).teacher_epochs == 10
    assert scaled_epochs(config.PROFILES["quick"], 3) == 1  # never zero
    with pytest.raises(ValueError, match="defense_scale must be > 0, got 0"):
        config.resolve("quick", defense_scale=0)


def test_the_clean_rule_stops_before_the_first_step_that_costs_more_than_ten_percent():
    rows = [
        {"amount": 0, "clean_acc": 0.90, "test_acc": 0.90, "test_asr": 1.0},
        {"amount": 1, "clean_acc": 0.85, "test_acc": 0.86, "test_asr": 0.5},
        {"amount": 2, "clean_acc": 0.80, "test_acc": 0.82, "test_asr": 0.1},  # 0.80 < 0.81: the first failure
        {"amount": 3, "clean_acc": 0.88, "test_acc": 0.70, "test_asr": 0.0},
    ]
    assert select_amount(rows) == 1
    assert select_amount(rows, acc_ratio=0.2) == 3
    assert select_amount(rows, choice="oracle", oracle_rule="largest") == 2
    assert select_amount(rows, choice="oracle") == 2  # lowest test ASR among test ACC >= 0.81
    with pytest.raises(ValueError, match="'test'.*allowed: clean, oracle"):
        select_amount(rows, choice="test")


def test_the_clean_rule_sweep_stops_at_its_first_failure_and_the_oracle_sweeps_everything():
    accs = {0.0: 0.90, 0.1: 0.85, 0.2: 0.80, 0.3: 0.88}  # 0.80 < 0.81 breaks the 10% rule at 0.2
    tried = []

    def apply(amount):
        tried.append(amount)
        return amount

    def predict(model, images, batch_size, device):  # stands in for the pruned model's predictions
        right = round(accs[model] * len(images))
        return torch.cat([torch.zeros(right, dtype=torch.long), torch.ones(len(images) - right, dtype=torch.long)])

    clean = data.ImageData(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), torch.zeros(100, dtype=torch.long))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common.metrics, "predict", predict)
        chosen, rows = common.choose_amount(list(accs), apply, clean=clean, device="cpu")
        assert (chosen, tried, [r["amount"] for r in rows]) == (0.1, [0.0, 0.1, 0.2], [0.0, 0.1, 0.2])
        tried.clear()
        oracle = OracleData(clean.x, clean.y, clean.x, target=1)
        chosen, rows = common.choose_amount(
            list(accs), apply, clean=clean, device="cpu", choice="oracle", oracle=oracle, oracle_rule="largest"
        )
        assert (chosen, tried) == (0.1, [0.0, 0.1, 0.2, 0.3])


def test_a_sweep_measures_a_model_once_when_amounts_give_the_same_model():
    """Thresholds that prune the same neurons give the same model: measured once, rows repeated."""
    same = {0.0: "a", 0.1: "a", 0.2: "b", 0.3: "b", 0.4: "c"}  # the model each amount gives
    accs = {"a": 0.90, "b": 0.86, "c": 0.70}
    measured = []

    def predict(model, images, batch_size, device):
        measured.append(model)
        right = round(accs[model] * len(images))
        return torch.cat([torch.zeros(right, dtype=torch.long), torch.ones(len(images) - right, dtype=torch.long)])

    clean = data.ImageData(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), torch.zeros(100, dtype=torch.long))
    oracle = OracleData(clean.x, clean.y, clean.x, target=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common.metrics, "predict", predict)
        plain = common.choose_amount(list(same), same.get, clean=clean, device="cpu", choice="oracle", oracle=oracle)
        calls = len(measured)
        measured.clear()
        deduplicated = common.choose_amount(
            list(same), same.get, clean=clean, device="cpu", choice="oracle", oracle=oracle, identity=same.get
        )
    assert deduplicated == plain  # the same choice and the same rows
    assert len(measured) == calls * 3 // 5  # three distinct models of five amounts


def test_fp_prunes_the_least_active_head_inputs_and_keeps_them_at_zero_through_fine_tuning():
    model, clean = tiny_model(10), separable_images(100, 10, noise=60, step=19)
    features = head_inputs(model, clean.x, "cpu")
    order = torch.argsort(features.mean(0))
    cfg = FPConfig.for_profile(SMOKE, acc_ratio=0.99)  # allow almost any drop: prunes all but the last step
    result = DEFENSES["fp"](model, clean, cfg, spec=tiny_spec(), seed=0)
    pruned = result.record["pruned"]
    assert pruned == max(r["amount"] for r in result.record["sweep"])
    head = result.model.linear.weight
    assert torch.all(head[:, order[:pruned]] == 0)
    assert torch.all(head[:, order[pruned:]].abs().sum(0) > 0)
    assert isinstance(result.model.linear, nn.Linear) and not hasattr(result.model.linear, "weight_orig")
    with pytest.raises(ValueError, match=r"FPConfig\.choice must be one of clean, oracle, got 'test'"):
        FPConfig(choice="test")
    with pytest.raises(ValueError, match="oracle=OracleData"):
        DEFENSES["fp"](model, clean, FPConfig.for_profile(SMOKE, choice="oracle"), spec=tiny_spec(), seed=0)


def test_fp_oracle_reads_the_test_set_it_is_given():
    model, clean = tiny_model(10), separable_images(100, 10, noise=60, step=19)
    oracle = OracleData(clean.x, clean.y, clean.x[:20], target=0)
    result = DEFENSES["fp"](
        model, clean, FPConfig.for_profile(SMOKE, choice="oracle"), spec=tiny_spec(), seed=0, oracle=oracle
    )
    assert {"test_acc", "test_asr"} <= set(result.record["sweep"][0])
    assert result.record["choice"] == "oracle"


def test_nad_attention_maps_and_the_vanishing_pooled_term():
    f = torch.zeros(1, 2, 2, 2)
    f[0, 0, 0, 0], f[0, 1, 1, 1] = 3.0, 4.0
    # mean_c f^2: [[4.5, 0], [0, 8]] -> normalised
    expected = torch.tensor([4.5, 0.0, 0.0, 8.0]) / torch.tensor([4.5, 8.0]).norm()
    assert torch.allclose(attention_map(f), expected[None])
    assert attention_loss(f, f) == 0
    assert attention_loss(f, torch.rand(1, 2, 2, 2)) > 0
    # The flaw the suite drops: at a 1x1 (pooled) point every attention map normalises to 1.
    assert attention_loss(torch.rand(4, 8, 1, 1), torch.rand(4, 8, 1, 1)) == 0
    with pytest.raises(ValueError, match="teacher_epochs must be an int >= 1, got 0"):
        NADConfig(teacher_epochs=0)


def test_nad_fails_on_a_point_the_model_does_not_have_before_training_the_teacher(monkeypatch):
    trained = []
    monkeypatch.setattr(nad, "fine_tune", lambda *a, **k: trained.append(1))
    cfg = NADConfig.for_profile(SMOKE, points=(("layer9", 1.0),))
    with pytest.raises(ValueError, match="layer9.*allowed"):
        DEFENSES["nad"](tiny_model(10), separable_images(100, 10, noise=60, step=19), cfg, spec=tiny_spec(), seed=0)
    assert trained == []  # refused before the teacher's epochs, not after them


def test_clp_zeroes_the_bn_channel_behind_a_planted_high_lipschitz_kernel_and_reads_no_data():
    model = tiny_model(10, width=8)
    with torch.no_grad():
        model.layer2[0].conv1.weight[3] *= 50  # one channel far more sensitive than its 15 siblings
    uclc = channel_lipschitz(model)
    conv_name, values = uclc["layer2.0.bn2"]
    assert conv_name == "layer2.0.conv1" and values.argmax() == 3
    result = DEFENSES["clp"](model, None, CLPConfig(), spec=None)  # no data at all
    assert result.record["pruned_channels"]["layer2.0.bn2"] == [3]
    bn = result.model.layer2[0].bn2
    assert bn.weight[3] == 0 and bn.bias[3] == 0
    assert torch.equal(bn.weight[:3], model.layer2[0].bn2.weight[:3])

    # Data-free: a "clean set" that explodes when touched is never touched.
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"CLP read clean.{name}")

        def __len__(self):
            raise AssertionError("CLP read len(clean)")

    DEFENSES["clp"](model, Untouchable(), CLPConfig())
    with pytest.raises(ValueError, match="u must be >= 0, got -1"):
        CLPConfig(u=-1)


@pytest.mark.parametrize("name", sorted(DEFENSE_CONFIGS))
def test_an_unknown_setting_is_named_with_the_allowed_ones(name):
    with pytest.raises(ValueError, match=r"unknown \w+Config setting\(s\) 'epoch_count'; allowed: "):
        config_for(name, config.PROFILES["quick"], epoch_count=3)
