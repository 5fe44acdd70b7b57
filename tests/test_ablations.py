"""Notebook 08's pieces: the reinitialization schemes, the two choices of n, NWC-FP's order, session variants."""

import copy
import math

import pytest
import torch
from torch import nn

from tsbd_utils import config, session, zoo
from tsbd_utils.attacks import ATTACKS
from tsbd_utils.defenses import DEFENSES, REINIT_SCHEMES, OracleData, TSBDConfig, reinitialize, zero_reinit
from tsbd_utils.defenses.fp import nwc_order
from tsbd_utils.defenses.reinit import choose_neuron_ratio, oracle_neuron_ratio
from tsbd_utils.zoo import ablations
from tsbd_utils.zoo.keys import defender_fields

from .test_tsbd import TwoConvs, _pair  # all weights 1; NWC a0 10, a1 1, b0 5, b1 0.5; the shortcut moves most

# n = 0.5 of the 4 neurons: a0 and b0. Their 8 changes pooled; m = 0.5 keeps the top 4 (4, 3, 2.5, 2): the
# picked weights are a0's first three and b0's first.
PICKED_A = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool).view(2, 1, 2, 2)
PICKED_B = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool).view(2, 1, 2, 2)


def test_the_schemes_are_registered_by_name_and_an_unknown_one_is_refused():
    assert list(REINIT_SCHEMES) == ["zero", "zero-neurons", "random"]
    original, changed = _pair()
    with pytest.raises(ValueError, match="unknown reinitialization scheme 'gaussian'; allowed: zero, zero-neurons"):
        reinitialize(original, changed, 0.5, 0.5, "gaussian")


def test_zero_scheme_zeroes_exactly_the_top_m_changes_of_the_top_n_neurons():
    original, changed = _pair()
    reinit, record = reinitialize(original, changed, 0.5, 0.5, "zero")
    assert torch.equal(reinit.a.weight, (~PICKED_A).float())
    assert torch.equal(reinit.b.weight, (~PICKED_B).float())
    assert torch.equal(reinit.shortcut[0].weight, original.shortcut[0].weight)
    assert record["zeroed_weights"] == 4 and "scheme" not in record  # TSBD's record, as zero_reinit wrote it
    again, same = zero_reinit(original, changed, 0.5, 0.5)
    assert torch.equal(again.a.weight, reinit.a.weight) and same == record


def test_zero_neurons_scheme_zeroes_the_whole_top_neurons_and_nothing_else():
    original, changed = _pair()
    reinit, record = reinitialize(original, changed, 0.5, 0.5, "zero-neurons")
    expected = torch.ones(2, 1, 2, 2)
    expected[0] = 0.0
    assert torch.equal(reinit.a.weight, expected) and torch.equal(reinit.b.weight, expected)  # a0 and b0, whole
    assert torch.equal(reinit.shortcut[0].weight, original.shortcut[0].weight)
    assert record["zeroed_weights"] == 8 and record["scheme"] == "zero-neurons"
    assert record["layers"] == {"a": {"neurons": 1, "zeroed_weights": 4}, "b": {"neurons": 1, "zeroed_weights": 4}}
    # m plays no part, even m = 0; and it is TSBD's zeroing at m = 1 (every |dw| >= the smallest)
    at_zero_m, _ = reinitialize(original, changed, 0.5, 0.0, "zero-neurons")
    assert torch.equal(at_zero_m.a.weight, expected)
    all_m, _ = reinitialize(original, changed, 0.5, 1.0, "zero")
    assert torch.equal(all_m.a.weight, expected) and torch.equal(all_m.b.weight, expected)


def test_random_scheme_redraws_exactly_tsbds_weights_from_the_default_initialization():
    original, changed = _pair()
    reinit, record = reinitialize(original, changed, 0.5, 0.5, "random", seed=3)
    for got, picked in ((reinit.a.weight, PICKED_A), (reinit.b.weight, PICKED_B)):
        assert torch.equal(got[~picked], torch.ones(int((~picked).sum())))  # the rest untouched
        bound = 1 / math.sqrt(4)  # Conv2d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 1 x 2 x 2
        assert (got[picked] != 1).all() and (got[picked].abs() <= bound).all()
    assert record["zeroed_weights"] == 4 and record["scheme"] == "random"
    again, _ = reinitialize(original, changed, 0.5, 0.5, "random", seed=3)
    other, _ = reinitialize(original, changed, 0.5, 0.5, "random", seed=4)
    assert torch.equal(again.a.weight, reinit.a.weight)  # seeded
    assert not torch.equal(other.a.weight, reinit.a.weight)
    assert torch.equal(original.a.weight, torch.ones(2, 1, 2, 2))  # the input model is left as it was


def test_tsbd_refuses_an_unknown_scheme_before_it_unlearns():
    with pytest.raises(ValueError, match="unknown reinitialization scheme 'Zero'"):
        DEFENSES["tsbd"](TwoConvs(), None, TSBDConfig(), spec=None, seed=0, reinit="Zero")


def test_oracle_n_is_the_lowest_test_asr_within_the_accuracy_budget():
    test = {0.1: (0.90, 0.80), 0.25: (0.88, 0.10), 0.4: (0.86, 0.02), 0.5: (0.60, 0.00)}
    assert oracle_neuron_ratio(test, before_acc=0.90) == 0.25  # 0.4 costs 4 points, 0.5 far more
    assert oracle_neuron_ratio(test, before_acc=0.90, max_drop=0.05) == 0.4
    assert oracle_neuron_ratio({0.1: (0.9, 0.1), 0.2: (0.9, 0.1)}, 0.9) == 0.1  # ties: the smaller n
    assert oracle_neuron_ratio(test, before_acc=0.99) is None  # nothing keeps the accuracy
    with pytest.raises(ValueError, match="no candidate"):
        oracle_neuron_ratio({}, 0.9)


def test_nwc_order_ranks_the_heads_inputs_by_their_channels_weight_change():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 3, 1, bias=False)
            self.conv2 = nn.Conv2d(3, 3, 1, bias=False)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flat = nn.Flatten()
            self.linear = nn.Linear(3, 2)

    model = Net()
    unlearned = copy.deepcopy(model)
    with torch.no_grad():
        unlearned.conv2.weight[:, 0] += torch.tensor([1.0, 3.0, 2.0]).view(3, 1, 1)
        unlearned.conv1.weight += 50.0  # another layer: not the head's inputs
    assert nwc_order(model, unlearned).tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="permutation of the head's 3 input features"):
        DEFENSES["fp"](model, None, spec=None, seed=0, order=torch.tensor([0, 0, 1]))


def test_plan_holds_the_profiles_n_and_refuses_bad_values():
    quick = config.resolve("quick")
    plan = ablations.AblationPlan.for_profile(quick)
    assert quick.tsbd_neuron_ratio in plan.n_values and plan.seeds == (0, 1, 2)
    assert ablations.AblationPlan.for_profile(quick, attacks=["sig"]).attacks == ("sig",)
    assert any("Blended" in line for line in ablations.left_out(plan))
    assert ablations.left_out(ablations.AblationPlan.for_profile(config.resolve("paper"))) == []
    with pytest.raises(ValueError, match=r"AblationPlan\.attacks must be a non-empty tuple of names from badnets, .*"
                                         r"got \('badnet',\)"):
        ablations.AblationPlan.for_profile(quick, attacks=["badnet"])
    share = r"a non-empty tuple of numbers in \(0, 1\)"
    with pytest.raises(ValueError, match=rf"AblationPlan\.poison_ratios must be {share}, got \(0\.1, 1\.0\)"):
        ablations.AblationPlan.for_profile(quick, poison_ratios=[0.1, 1.0])
    with pytest.raises(ValueError, match="seeds must be a tuple of ints"):
        ablations.AblationPlan.for_profile(quick, seeds=[0, -1])


def test_only_notebook_05s_own_runs_record_per_epoch_curves(monkeypatch):
    asked = []
    monkeypatch.setattr(ablations, "tsbd_model", lambda *a, curve_size, **k: asked.append(curve_size))
    s = type("S", (), {"profile": config.resolve("quick")})()  # tsbd_variant reads only the profile
    ablations.tsbd_variant(s, "badnets")  # TSBD as notebook 05 runs it: its cache entry, with curves
    ablations.tsbd_variant(s, "badnets", alpha=0.0)  # notebook 05's vanilla fine-tuning: the same
    ablations.tsbd_variant(s, "badnets", neuron_ratio=0.1)
    ablations.tsbd_variant(s, "badnets", lift=True)
    ablations.tsbd_variant(s, "badnets", reinit="random")
    ablations.tsbd_variant(s, "badnets", attack_config=ATTACKS["badnets"](ratio=0.01).config)
    assert asked == [zoo.CURVE_IMAGES, zoo.CURVE_IMAGES, 0, 0, 0, 0]


def _smoke(tmp_path, cache_dir, **variant):
    s = session.start("08", profile="smoke", cache_dir=cache_dir, figures_dir=str(tmp_path / "f"),
                      run_dir=str(tmp_path / "r"))
    return s.variant(**variant) if variant else s


@pytest.mark.parametrize("change, message", [
    ({"attacks": "badnets"}, r"AblationPlan\.attacks must be a non-empty tuple of names from badnets, .*got 'badnets'"),
    ({"seed_attacks": []}, r"AblationPlan\.seed_attacks must be a non-empty tuple of names from badnets"),
    ({"seeds": [2**64]}, r"AblationPlan\.seeds must be a tuple of ints in \[0, 4294967295\], "
                         r"got \(18446744073709551616,\)"),
])
def test_the_ablation_plan_refuses_a_bare_string_and_an_unusable_seed(change, message):
    with pytest.raises(ValueError, match=message):
        ablations.AblationPlan.for_profile(config.resolve("quick"), **change)


def test_a_variant_session_keeps_the_cache_and_keys_its_defenders_images(tmp_path, cache_dir):
    s = _smoke(tmp_path, cache_dir)
    more = s.variant(clean_ratio=0.1)
    assert more.cache is s.cache and more.seed == s.seed and more.profile.clean_ratio == 0.1
    assert defender_fields(s) == {} and defender_fields(more) == {"clean_ratio": 0.1}
    assert len(more.splits.clean) == 2 * len(s.splits.clean)
    assert torch.equal(more.splits.clean.x[: len(s.splits.clean)], s.splits.clean.x)  # the 5% come first
    assert torch.equal(more.splits.train.x, s.splits.train.x)  # the attacker's data does not change
    assert s.variant(seed=2).seed == 2 and s.seed == 0
    with pytest.raises(ValueError, match=r"seed must be an int in 0\.\.4294967295, got -1"):
        s.variant(seed=-1)
    with pytest.raises(ValueError, match="clean_ratio must be in"):
        s.variant(clean_ratio=1.5)


def test_the_clean_rule_never_reads_the_test_set_and_the_oracle_reads_it_only_through_oracle_data(
    tmp_path, cache_dir, monkeypatch
):
    s = _smoke(tmp_path, cache_dir)
    zoo.unlearned_model(s, "badnets")  # the models, cached before the test set is fenced off
    ratios = (0.2, 0.6)  # a sweep of this test's own, so neither result is in the shared cache yet

    def fenced(*args, **kwargs):
        raise AssertionError("the clean rule read the test set")

    monkeypatch.setattr(ablations, "oracle_data", fenced)
    monkeypatch.setattr(zoo.evaluation, "evaluation_set", fenced)
    clean = ablations.stage1_clean(s, "badnets", ratios)
    assert [n for n, _ in clean["after"]] == list(ratios)
    rule = choose_neuron_ratio(dict(clean["after"]), clean["before"])
    assert rule in ratios
    monkeypatch.undo()

    calls = []
    real = ablations.oracle_data

    def labelled(session_, attack, size=None):
        calls.append(size)
        data = real(session_, attack, size)
        # every clean test image relabelled into one class: what the oracle reports must change with the labels
        return OracleData(data.x_test, torch.zeros_like(data.y_test), data.x_bd, data.target)

    monkeypatch.setattr(ablations, "oracle_data", labelled)
    test = ablations.stage1_test(s, "badnets", ratios, images=100)
    assert calls == [100]
    monkeypatch.undo()
    truth = ablations.stage1_test(s, "badnets", ratios, images=99)  # the real labels (another key)
    assert [row[1] for row in test["after"]] != [row[1] for row in truth["after"]]
    # the clean rule's input, asked again, comes back the same: it never depended on the test labels
    assert ablations.stage1_clean(s, "badnets", ratios) == clean


def test_a_diverged_unlearning_is_named_not_silently_used():
    original, changed = _pair()
    with torch.no_grad():
        changed.a.weight.fill_(float("nan"))
    with pytest.warns(RuntimeWarning, match="non-finite weights"):
        reinitialize(original, changed, 0.5, 0.5)
