import dataclasses
import doctest
import json
import subprocess
import sys

import pytest

from tsbd_utils import settings_report
from tsbd_utils.attacks import ATTACKS
from tsbd_utils.config import PROFILES
from tsbd_utils.defenses import DEFENSES
from tsbd_utils.settings_report import format_rows, main, resolved_settings
from tsbd_utils.unlearning import UNLEARN_MODES, UnlearnConfig


def flat(config, prefix=""):
    """{dotted name: value} of a config, flattened independently of the module under test."""
    out = {}
    for key, value in (dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config).items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def section(rows, name):
    return {r.setting: r for r in rows if r.section == name}


@pytest.fixture(scope="module")
def quick():
    return resolved_settings("quick")


@pytest.fixture(scope="module")
def paper():
    return resolved_settings("paper")


def test_every_attack_defense_and_unlearning_mode_has_a_section(quick):
    sections = {r.section for r in quick}
    expected = {f"attack {a}" for a in ATTACKS} | {f"defense {d}" for d in DEFENSES}
    expected |= {f"unlearning {m}" for m in UNLEARN_MODES} | {"profile", "training"}
    assert expected <= sections
    assert len(ATTACKS) == 8 and len(DEFENSES) == 9  # the registries are not empty by accident
    names = [(r.section, r.setting) for r in quick]
    assert len(names) == len(set(names))  # no setting listed twice


@pytest.mark.parametrize("profile", list(PROFILES))
def test_values_are_what_the_suite_builds(profile):
    rows = resolved_settings(profile)
    p = PROFILES[profile]
    for name in DEFENSES:
        shown = {k: r.value for k, r in section(rows, f"defense {name}").items()}
        assert shown == flat(DEFENSES[name].for_profile(p)), name
    for mode in UNLEARN_MODES:
        shown = {k: r.value for k, r in section(rows, f"unlearning {mode}").items()}
        assert shown == flat(UnlearnConfig.for_profile(p, mode)), mode
    assert {k: r.value for k, r in section(rows, "training").items()} == flat(p.train)
    assert section(rows, "defense tsbd")["neuron_ratio"].value == p.tsbd_neuron_ratio
    assert section(rows, "attack blended")["alpha"].value == ATTACKS["blended"]().config.alpha


def test_quick_values_and_changed_flags(quick):
    ft = section(quick, "defense ft")
    assert ft["finetune.epochs"].value == DEFENSES["ft"].for_profile(PROFILES["quick"]).finetune.epochs == 10
    assert ft["finetune.epochs"].changed and ft["finetune.epochs"].default == 100  # BackdoorBench's 100, scaled
    assert not ft["finetune.lr"].changed
    tsbd = section(quick, "defense tsbd")
    assert tsbd["unlearn.lr"].changed and tsbd["unlearn.lr"].value == PROFILES["quick"].unlearn_lr
    assert not tsbd["neuron_ratio"].changed  # the quick n equals TSBDConfig's default
    assert section(quick, "defense anp")["iterations"].value == 40
    profile = section(quick, "profile")
    assert profile["width"].value == 16 and not profile["width"].changed  # no class default to differ from
    assert "train.epochs" not in profile  # training settings have their own section
    # Input-aware's longer run on a short profile, against the profile's own recipe.
    recipe = section(quick, "attack inputaware")["train.epochs"]
    assert (recipe.value, recipe.default) == (8, PROFILES["quick"].train.epochs)


def test_attack_loops_show_the_scale_prepare_runs_them_at(quick, paper):
    for name in ("lf", "ssba", "trojan", "inputaware"):
        attack = ATTACKS[name]()
        scaled = attack.scaled_settings(PROFILES["quick"])
        assert scaled, name  # each of these fits a resource in prepare() at the profile's scale
        rows = section(quick, f"attack {name}")
        for field, value in scaled.items():
            published = getattr(attack.config, field)
            assert rows[field].value == value == PROFILES["quick"].scale_epochs(published) < published
            assert rows[field].changed and rows[field].default == published
            assert not section(paper, f"attack {name}")[field].changed  # the paper profile runs the published loop
    assert ATTACKS["badnets"]().scaled_settings(PROFILES["quick"]) == {}


def test_paper_changes_no_defense_setting(paper):
    defense_rows = [r for r in paper if r.section.startswith("defense ")]
    assert defense_rows and not [(r.section, r.setting) for r in defense_rows if r.changed]
    # The paper profile does change something: BackdoorBench's constant lr for WaNet.
    wanet = section(paper, "attack wanet")["train.schedule"]
    assert wanet.changed and (wanet.value, wanet.default) == ("constant", "cosine")
    assert "train.schedule" not in section(resolved_settings("quick"), "attack wanet")  # quick keeps its recipe


def test_dataset_option_reaches_the_profile():
    rows = resolved_settings("quick", dataset="cifar10")
    assert section(rows, "profile")["dataset"].value == "cifar10"
    assert section(resolved_settings("quick"), "profile")["dataset"].value == "fashion_mnist"


@pytest.mark.parametrize(
    "argv, bad, allowed",
    [
        (["show", "--profile", "huge"], "huge", "quick"),
        (["show", "--format", "xml"], "xml", "markdown"),
        (["show", "--dataset", "mnist"], "mnist", "cifar10"),
        (["list"], "list", "show"),
    ],
)
def test_bad_input_exits_2_naming_the_value_and_the_choices(capsys, argv, bad, allowed):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert repr(bad) in err and allowed in err


def test_json_output_parses_and_flags_changes(capsys):
    assert main(["show", "--profile", "smoke", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == len(resolved_settings("smoke"))
    by_name = {(r["section"], r["setting"]): r for r in records}
    epochs = by_name[("defense ft", "finetune.epochs")]
    assert (epochs["value"], epochs["default"], epochs["changed"]) == (2, 100, True)
    lr = by_name[("defense ft", "finetune.lr")]
    assert (lr["default"], lr["changed"]) == (None, False)


def test_text_and_markdown_show_the_default_only_where_it_differs(quick):
    rows = [r for r in quick if r.section == "defense ft"]
    text = format_rows(rows, "text").splitlines()
    assert text[0].split() == ["section", "setting", "value", "default"]
    assert [line.split()[-2:] for line in text[1:3]] == [["10", "100"], ["finetune.lr", "0.01"]]
    markdown = format_rows(rows, "markdown").splitlines()
    assert markdown[2] == "| defense ft | finetune.epochs | 10 | 100 |"
    assert markdown[3] == "| defense ft | finetune.lr | 0.01 |  |"
    with pytest.raises(ValueError, match=r"unknown format 'xml'; allowed: text, json, markdown"):
        format_rows(rows, "xml")


def test_docstring_example_holds():
    assert doctest.testmod(settings_report).failed == 0


def test_python_m_config_show_runs_without_a_runtime_warning():
    run = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "tsbd_utils.config", "show", "--profile", "smoke"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "RuntimeWarning" not in run.stderr
    assert run.stdout.splitlines()[1].split() == ["profile", "name", "smoke"]
