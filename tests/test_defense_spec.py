"""The defenses registry: one spec per defense, run on a DefenseContext; and the per-attack table helpers."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tsbd_utils import config, tables
from tsbd_utils.defenses import DEFENSE_CONFIGS, DEFENSES, DefenseContext, DefenseResult, DefenseSpec
from tsbd_utils.defenses.base import COMMON_INPUTS, CONTEXT_OPTIONS

TABLE1_ORDER = ["tsbd", "ft", "fp", "nad", "nc", "anp", "clp", "ibau", "rnp"]


def test_every_spec_says_what_its_defense_is():
    assert list(DEFENSES) == TABLE1_ORDER  # import order is the paper's column order (TSBD first)
    titles = [DEFENSES[d].title for d in TABLE1_ORDER]
    assert titles == ["TSBD", "FT", "FP", "NAD", "NC", "ANP", "CLP", "i-BAU", "RNP"]
    for name in TABLE1_ORDER:
        spec = DEFENSES[name]
        assert spec.name == name and spec.url.startswith("https://") and '"' in spec.paper, name
        assert DEFENSE_CONFIGS[name] is spec.config and hasattr(spec.config, "for_profile"), name
        acc, asr, der = spec.paper_average
        assert 0 < asr < acc < 100 and 50 <= der <= 100, name
        # every declared option is a keyword the function accepts
        params = inspect.signature(spec.defend).parameters
        assert set(spec.options) <= set(params) and set(COMMON_INPUTS) - {"clean"} <= set(params), name
    assert DEFENSES["tsbd"].paper_average == (91.7, 2.18, 97.09)


class _Echo:
    """A defense that records what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, clean, config=None, **kwargs):
        self.calls.append((model, clean, config, kwargs))
        return DefenseResult(model, {"kwargs": sorted(kwargs)})


def _spec(defend, options=()):
    return DefenseSpec(name="echo", title="Echo", paper='A, "B", C 2024', url="https://example.org",
                       config=config.TrainConfig, defend=defend, holds="nothing", options=options)


def test_run_passes_the_common_inputs_and_only_the_declared_options_it_holds():
    echo = _Echo()
    model, clean, oracle = nn.Linear(2, 2), object(), object()
    ctx = DefenseContext(clean=clean, spec=None, seed=7, device=torch.device("cpu"), oracle=oracle,
                         eval_fn=lambda m: {})
    recipe = config.TrainConfig(epochs=2)
    _spec(echo).run(model, ctx, recipe)
    m, c, cfg, kwargs = echo.calls[-1]
    assert m is model and c is clean and cfg is recipe
    assert kwargs == {"spec": None, "seed": 7, "device": torch.device("cpu"), "progress": False}  # no oracle
    _spec(echo, ("oracle",)).run(model, ctx, extra=1)
    assert echo.calls[-1][3]["oracle"] is oracle and echo.calls[-1][3]["extra"] == 1
    assert "eval_fn" not in echo.calls[-1][3]
    _spec(echo, ("oracle",)).run(model, DefenseContext(clean=clean, spec=None))  # declared, but not held
    assert "oracle" not in echo.calls[-1][3]


def test_a_spec_is_called_like_its_function_and_refuses_unknown_options():
    echo = _Echo()
    _spec(echo)(nn.Linear(1, 1), None, None, seed=3)
    assert echo.calls[-1][3] == {"seed": 3}
    allowed = ", ".join(CONTEXT_OPTIONS)
    with pytest.raises(ValueError, match=r"unknown defense option\(s\) \['teacher'\]; allowed: " + allowed):
        _spec(echo, ("teacher",))


def test_a_spec_refuses_another_defenses_config_by_name_before_the_defense_runs():
    echo = _Echo()
    ctx = DefenseContext(clean=None, spec=None)
    clp = DEFENSE_CONFIGS["clp"]()
    message = r"FT takes a FTConfig \(or None for its defaults\), got a CLPConfig"
    with pytest.raises(TypeError, match=message):
        DEFENSES["ft"](nn.Linear(1, 1), None, clp)
    with pytest.raises(TypeError, match=message):
        DEFENSES["ft"].run(nn.Linear(1, 1), ctx, clp)
    with pytest.raises(TypeError, match="Echo takes a TrainConfig .*got a dict"):
        _spec(echo)(nn.Linear(1, 1), None, {"epochs": 2})
    assert echo.calls == []  # nothing ran
    _spec(echo).run(nn.Linear(1, 1), ctx, None)  # None: the defense's defaults
    assert echo.calls[-1][2] is None


def test_the_registry_refuses_a_second_defense_of_the_same_name():
    with pytest.raises(ValueError, match="ft"):
        DEFENSES.register("ft", DEFENSES["ft"])


def _long():
    rows = [  # two methods, two attacks; seconds NaN for the backdoored row
        ("none", "badnets", 0.9, 1.0, 0.0, 0.5, float("nan")),
        ("none", "wanet", 0.8, 0.9, 0.1, 0.5, float("nan")),
        ("FT", "badnets", 0.88, 0.1, 0.8, 0.94, 10.0),
        ("FT", "wanet", 0.8, 0.5, 0.4, 0.7, 20.0),
    ]
    return pd.DataFrame(rows, columns=["method", "attack", "ACC", "ASR", "RA", "DER", "seconds"])


def test_by_attack_lays_the_long_table_out_as_table_1_with_the_mean_of_per_attack_values():
    wide = tables.by_attack(_long(), ("ASR", "DER"), {"badnets": "BadNets", "wanet": "WaNet"})
    assert list(wide.index) == ["BadNets", "WaNet", "average"]
    assert list(wide.columns) == [("ASR", "none"), ("ASR", "FT"), ("DER", "none"), ("DER", "FT")]
    assert wide.loc["WaNet", ("ASR", "FT")] == 0.5
    assert wide.loc["average", ("DER", "FT")] == pytest.approx(0.82)  # mean of the DERs, not DER of the means
    assert wide.loc["average", ("ASR", "none")] == pytest.approx(0.95)


def test_a_methods_average_does_not_depend_on_the_other_methods_beside_it():
    """Table 1 and its extra rows share the no-defense column: its average must agree to the last bit."""
    rng = np.random.default_rng(0)
    long = pd.DataFrame(
        [{"method": m, "attack": a, "ACC": rng.random(), "ASR": rng.random(), "DER": rng.random()}
         for m in "abcdefghij" for a in "pqrstuvw"]
    )
    for k in range(1, 11):
        alone = tables.by_attack(long[long["method"].isin(list("abcdefghij"[:k]))])
        assert alone.loc["average", ("ASR", "a")] == long[long["method"] == "a"]["ASR"].to_numpy().mean()


def test_by_attack_refuses_an_unknown_metric():
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['PSNR'\]; allowed: ACC, ASR, RA, DER, seconds"):
        tables.by_attack(_long(), ("ASR", "PSNR"))
