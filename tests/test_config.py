import dataclasses
import math
import re

import pytest

from tsbd_utils import config
from tsbd_utils.registry import Registry, UnknownNameError
from tsbd_utils.settings import (
    UnknownSettingError,
    above,
    at_least,
    check_ranges,
    each,
    in_range,
    non_negative,
    one_of,
    optional,
    positive,
    settings,
)


def test_profiles_exist_with_their_scales():
    assert list(config.PROFILES) == ["smoke", "quick", "paper"]
    quick, paper = config.PROFILES["quick"], config.PROFILES["paper"]
    assert (quick.dataset, quick.train_size, quick.width, quick.train.epochs) == ("fashion_mnist", 20000, 16, 5)
    assert (paper.dataset, paper.train_size, paper.width) == ("cifar10", None, 64)
    # BackdoorBench's CIFAR-10 recipe.
    assert (
        paper.train.epochs,
        paper.train.lr,
        paper.train.momentum,
        paper.train.weight_decay,
        paper.train.schedule,
        paper.train.batch_size,
    ) == (100, 0.01, 0.9, 5e-4, "cosine", 128)
    assert all(p.clean_ratio == 0.05 for p in config.PROFILES.values())
    assert not config.PROFILES["smoke"].meaningful and quick.meaningful
    # Reported numbers: a seeded half of Fashion-MNIST's 10,000 test images at quick, the whole test set in the paper.
    assert (quick.eval_size, paper.eval_size, config.resolve("quick", eval_size="all").eval_size) == (5000, None, None)


def test_unknown_profile_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown profile 'quik'; allowed: smoke, quick, paper"):
        config.resolve("quik")


def test_overrides_apply_and_none_keeps_the_default():
    p = config.resolve("quick", dataset=None, width=8, train={"epochs": 2})
    assert (p.dataset, p.width, p.train.epochs, p.train.lr) == ("fashion_mnist", 8, 2, 0.05)
    assert config.resolve("smoke", train_size="all").train_size is None
    assert config.PROFILES["quick"].train.epochs == 5  # the registered profile is untouched


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": 3}, r"unknown profile field 'epochs'; allowed: dataset, train_size"),
        ({"train": {"epoch": 3}}, r"unknown train field 'epoch'; allowed: epochs, batch_size"),
        ({"dataset": "mnist"}, r"unknown dataset 'mnist'; allowed: fashion_mnist, cifar10, gtsrb"),
        ({"model": "resnet50"}, r"unknown model 'resnet50'; allowed: preactresnet18"),
        ({"train": {"schedule": "step"}}, r"unknown schedule 'step'; allowed: constant, cosine, onecycle"),
        ({"train": {"epochs": -1}}, r"epochs must be an int >= 0, got -1"),
        ({"clean_ratio": 5}, r"clean_ratio must be in \(0, 1\), got 5"),
        ({"width": 0}, r"width must be an int > 0, got 0"),
        ({"eval_size": 0}, r"eval_size must be None or an int > 0, got 0"),
        ({"unlearn_lr": 0}, r"unlearn_lr must be > 0, got 0"),
        ({"tsbd_neuron_ratio": 1.5}, r"tsbd_neuron_ratio must be in \(0, 1\), got 1.5"),
        ({"anp_iterations": 0}, r"anp_iterations must be None or an int > 0, got 0"),
    ],
)
def test_bad_overrides_fail_with_the_allowed_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        config.resolve("quick", **overrides)


def test_scale_epochs_and_summary():
    smoke, paper = config.PROFILES["smoke"], config.PROFILES["paper"]
    assert paper.scale_epochs(100) == 100 and config.PROFILES["quick"].scale_epochs(100) == 20
    assert smoke.scale_epochs(20) == 1  # never zero
    summary = paper.summary()
    assert summary["train.epochs"] == 100 and "train" not in summary


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.PROFILES["quick"].width = 64


def test_registry_rejects_duplicates_and_upper_case():
    reg = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    with pytest.raises(ValueError, match="lower case"):
        reg.register("B", 3)
    with pytest.raises(UnknownNameError) as err:
        reg["b"]
    assert isinstance(err.value, KeyError) and str(err.value) == "unknown thing 'b'; allowed: a"


@pytest.mark.parametrize("names, message", [
    ("a", r"NAMES must be None or a non-empty list of thing names, got 'a'; allowed: a, b"),  # not letter by letter
    ([], r"NAMES must be None or a non-empty list of thing names, got \[\]; allowed: a, b"),
    (3, r"NAMES must be None or a non-empty list of thing names, got 3"),
    (["a", "a"], r"NAMES names 'a' more than once; allowed: a, b"),
    (["a", "c"], r"unknown thing 'c'; allowed: a, b"),
])
def test_registry_select_refuses_a_bare_string_an_empty_list_and_repeats(names, message):
    reg = Registry("thing")
    reg.register("a", 1)
    reg.register("b", 2)
    assert reg.select(None) == ["a", "b"] and reg.select(["b", "a"], "NAMES") == ["b", "a"]
    with pytest.raises(ValueError, match=message):
        reg.select(names, "NAMES")


def test_config_knows_the_registered_names_without_importing_them():
    from tsbd_utils import names
    from tsbd_utils.datasets import DATASETS
    from tsbd_utils.models import MODELS

    assert names.DATASET_NAMES == tuple(DATASETS) and names.MODEL_NAMES == tuple(MODELS)
    import subprocess
    import sys

    code = ("import sys, tsbd_utils.config; "
            "print(sorted(m for m in sys.modules if m.startswith(('tsbd_utils.', 'torch'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "tsbd_utils.data" not in loaded and "tsbd_utils.models" not in loaded and "'torch'" not in loaded, loaded


@pytest.mark.parametrize(
    "name, setting, value, wanted",
    [
        ("clp", "u", "3", "a finite number >= 0"),  # a ranged setting: its range too
        ("ft", "finetune", {"epochs": 5}, "a FineTuning"),  # a nested config, never a plain dict
        ("tsbd", "unlearn", {"lr": 1e-3}, "an UnlearnConfig"),
        ("tsbd", "epochs", True, "an int >= 0"),
        ("anp", "eps", False, "a finite number >= 0"),
        ("ibau", "augment", 1, "True or False"),
        ("nad", "teacher_epochs", 2.0, "an int >= 1"),
    ],
)
def test_a_setting_of_the_wrong_type_names_the_type_asked_for(name, setting, value, wanted):
    from tsbd_utils.defenses import DEFENSES, config_for

    profile = config.resolve("quick")
    title = DEFENSES[name].config.__name__
    with pytest.raises(ValueError, match=rf"^{title}\.{setting} must be {wanted}, got {re.escape(repr(value))}$"):
        config_for(name, profile, **{setting: value})
    with pytest.raises(ValueError, match=rf"^{title}\.{setting} must be {wanted}"):
        DEFENSES[name].config(**{setting: value})  # built directly, the same check


def test_python_numbers_pass_the_type_check_and_bools_are_not_numbers():
    import numpy as np

    from tsbd_utils.defenses import TSBDConfig

    c = TSBDConfig(neuron_ratio=np.float64(0.3), epochs=2, radius=1)  # a float subclass, an int as a float
    assert c.neuron_ratio == 0.3 and c.epochs == 2
    with pytest.raises(ValueError, match=r"TSBDConfig\.epochs must be an int >= 0, got np\.int64\(2\)"):
        TSBDConfig(epochs=np.int64(2))
    with pytest.raises(ValueError, match=r"TrainConfig\.epochs must be an int >= 0, got True"):
        config.TrainConfig(epochs=True)
    with pytest.raises(ValueError, match=r"TrainConfig\.lr must be a finite number >= 0, got '0.1'"):
        config.resolve("quick", train={"lr": "0.1"})


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: config.resolve("quick", train={"lr": float("inf")}),
         r"TrainConfig\.lr must be a finite number >= 0, got inf"),
        (lambda: config.resolve("quick", epoch_scale=float("nan")), r"Profile\.epoch_scale must be a finite number"),
        (
            lambda: dataclasses.replace(config.PROFILES["quick"], train={"epochs": 1}),
            r"Profile\.train must be a TrainConfig, got \{'epochs': 1\}",
        ),
        (
            lambda: config.resolve("quick", eval_size="5000"),
            r"Profile\.eval_size must be None or an int > 0, got '5000'",
        ),
    ],
)
def test_infinite_numbers_and_plain_dicts_for_nested_configs_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr": -0.01}, r"FineTuning\.lr must be >= 0, got -0\.01"),
        ({"momentum": 1.0}, r"FineTuning\.momentum must be in \[0, 1\), got 1\.0"),
        ({"batch_size": 0}, r"FineTuning\.batch_size must be an int > 0, got 0"),
        ({"epochs": 0}, r"FineTuning\.epochs must be an int >= 1, got 0"),
        ({"schedule": "step"}, r"step.*allowed: "),
    ],
)
def test_fine_tuning_checks_its_recipe_when_built(overrides, message):
    from tsbd_utils.defenses.common import FineTuning

    with pytest.raises(ValueError, match=message):
        FineTuning(**overrides)


def _every_config_class():
    from tsbd_utils import shortcut, unlearning
    from tsbd_utils.attacks import ATTACKS
    from tsbd_utils.defenses import DEFENSE_CONFIGS
    from tsbd_utils.defenses.common import FineTuning

    return [config.TrainConfig, config.Profile, unlearning.UnlearnConfig, FineTuning, shortcut.PhotometricConfig,
            *(a.config_class for a in ATTACKS.values()), *DEFENSE_CONFIGS.values()]


def test_every_config_built_directly_names_an_unknown_setting_and_lists_the_allowed_ones():
    classes = _every_config_class()
    assert len(classes) == 5 + 8 + 9
    for cls in classes:
        allowed = ", ".join(f.name for f in dataclasses.fields(cls) if f.init)
        with pytest.raises(UnknownSettingError, match=rf"unknown {cls.__name__} setting\(s\) 'colour'; "
                                                            rf"allowed: {re.escape(allowed)}$"):
            cls(colour="red")
        assert issubclass(UnknownSettingError, TypeError)  # what Python's own message was: old handlers work
        with pytest.raises(dataclasses.FrozenInstanceError):  # still a frozen dataclass
            setattr(cls.__new__(cls), dataclasses.fields(cls)[0].name, 1)


def test_a_defense_config_comes_from_a_profile_or_its_name():
    from tsbd_utils.defenses import config_for

    assert config_for("tsbd", "quick") == config_for("tsbd", config.PROFILES["quick"])
    with pytest.raises(UnknownNameError, match="unknown profile 'fast'; allowed: smoke, quick, paper"):
        config_for("tsbd", "fast")


# ---------------------------------------------------------------- the range rules every config checks its settings by
@pytest.mark.parametrize(
    "rule, accepted, refused, allowed",
    [
        (at_least(1, int), [1, 7], [0, -1, True, 1.0, "1", None], "an int >= 1"),
        (at_least(0), [0, 0.0, 1e9], [-1e-12, float("inf"), float("nan"), False, "0"], ">= 0"),
        (above(0), [1e-12, 3], [0, 0.0, -1.0, True, float("inf")], "> 0"),
        (above(0, int), [1], [0, True, 2.5], "an int > 0"),
        (in_range(0, 1), [0, 0.0, 1, 1.0, 0.5], [math.nextafter(0, -1), math.nextafter(1, 2), True], "in [0, 1]"),
        (in_range(0, 1, low_open=True, high_open=True), [math.nextafter(0, 1), math.nextafter(1, 0)], [0, 1.0],
         "in (0, 1)"),
        (in_range(0, 1, low_open=True), [1.0], [0.0], "in (0, 1]"),
        (in_range(0, 1, high_open=True), [0.0], [1.0], "in [0, 1)"),
        (in_range(1, 3, kind=int), [1, 3], [0, 4, 2.0, True], "an int in [1, 3]"),
        (optional(at_least(1, int)), [None, 1], [0, True, "1"], "None or an int >= 1"),
        (each(in_range(0, 1, high_open=True), length=2), [(0, 0.5)], [(0, 1.0), (0.5,), [0.5, 0.5], 0.5],
         "a tuple of 2 numbers in [0, 1)"),
        (each(at_least(0, int), nonempty=True), [(0,), (0, 3)], [(), (True,), (-1,), (0, 1.5)],
         "a non-empty tuple of ints >= 0"),
        (each(at_least(1, int)), [(), (1, 2)], [(0,), [1]], "a tuple of ints >= 1"),
        (one_of(("clean", "oracle")), ["clean", "oracle"], ["test", "", None, ("clean",)], "one of clean, oracle"),
    ],
)
def test_each_rule_takes_its_boundary_and_refuses_just_outside_it(rule, accepted, refused, allowed):
    assert rule.allowed == allowed
    for value in accepted:
        assert rule(value), value
    for value in refused:
        assert not rule(value), value


def test_a_rule_asks_for_an_int_or_a_finite_number_only():
    with pytest.raises(TypeError, match="int or float"):
        at_least(0, bool)
    assert positive.describe(0.0) == "> 0" and positive.describe("x") == "a finite number > 0"
    assert positive.describe(float("nan")) == "a finite number > 0"
    assert non_negative.describe(True) == "a finite number >= 0" and at_least(1, int).describe(True) == "an int >= 1"


@settings
class _Knobs:
    epochs: int = 1
    lr: float = 0.1
    momentum: float = 0.9
    size: int | None = None
    betas: tuple[float, float] = (0.5, 0.9)
    mode: str = "a"
    flag: bool = False

    def __post_init__(self) -> None:
        check_ranges(
            self, epochs=at_least(1, int), lr=positive, momentum=in_range(0, 1, high_open=True),
            size=optional(above(0, int)), betas=each(in_range(0, 1, high_open=True), length=2), mode=one_of("ab"),
        )


def test_check_ranges_names_every_bad_setting_in_one_error():
    assert _Knobs(epochs=1, lr=1e-9, momentum=0.0, size=None, betas=(0.0, 0.999), mode="b").size is None
    assert _Knobs(size=1).size == 1
    with pytest.raises(ValueError) as err:
        _Knobs(epochs=0, lr=0.0, momentum=1.0, size=0, betas=(0.5,), mode="c", flag=1)
    assert str(err.value) == (
        "_Knobs.epochs must be an int >= 1, got 0; _Knobs.lr must be > 0, got 0.0; "
        "_Knobs.momentum must be in [0, 1), got 1.0; _Knobs.size must be None or an int > 0, got 0; "
        "_Knobs.betas must be a tuple of 2 numbers in [0, 1), got (0.5,); _Knobs.mode must be one of a, b, got 'c'; "
        "_Knobs.flag must be True or False, got 1"  # a setting without a range: its type, as check_types says
    )


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("epochs", True, "an int >= 1, got True"),  # isinstance(True, int), but a bool is never a count
        ("epochs", 2.0, "an int >= 1, got 2.0"),
        ("lr", True, "a finite number > 0, got True"),
        ("lr", float("inf"), "a finite number > 0, got inf"),  # inf > 0, but it would break training
        ("lr", float("nan"), "a finite number > 0, got nan"),
        ("lr", "0.1", "a finite number > 0, got '0.1'"),
        ("size", True, "None or an int > 0, got True"),
    ],
)
def test_check_ranges_refuses_bools_and_non_finite_numbers_naming_the_range(setting, value, message):
    with pytest.raises(ValueError, match=rf"^_Knobs\.{setting} must be {re.escape(message)}$"):
        _Knobs(**{setting: value})


def test_check_ranges_refuses_a_rule_for_a_setting_the_config_does_not_have():
    with pytest.raises(TypeError, match="_Knobs does not have: epoch"):
        check_ranges(_Knobs(), epoch=at_least(1, int))
