"""Every notebook: committed clean, and run headlessly through papermill in the smoke profile."""

from __future__ import annotations

import ast
import base64
import json
from pathlib import Path

import nbformat
import pytest

from tsbd_utils import bundle, metrics, paths, reproduce

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = paths.notebooks(NOTEBOOKS_DIR)
REQUIRED_PARAMETERS = {  # every notebook declares these (reproduce.py passes them), with these defaults
    "PROFILE": "quick",
    "DATASET": None,
    "SEED": 0,
    "DEVICE": "auto",
    "CACHE_DIR": None,
    "FIGURES_DIR": "../figures",
    "RUN_DIR": None,
    "DATA_DIR": None,
}

ALL_ATTACKS = ["badnets", "blended", "inputaware", "lf", "sig", "ssba", "trojan", "wanet"]
ABLATION_TABLES = ["n_stage1", "n_choices_stage1", "n_stage2", "n_choices_stage2", "m_r_alpha", "reinit_schemes",
                   "finetune_schemes", "data_ratios", "nwc_fp", "seed_spread", "seed_stage1"]  # notebook 08's exports
OFFICIAL_N = [0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 0.9]

# What each notebook must write in the smoke profile: figure slugs, and checks on its results.
EXPECTED: dict[str, dict] = {
    "00": {
        "figures": ["pipeline", "dataset_preview", "clean_training", "clean_accuracy_per_class"],
        "results": lambda r: (
            0 <= r["clean_acc"] <= 1
            and r["train_images"] == 2000
            and r["clean_images"] == 100
            and r["test_images"] == 1000
            and r["evaluated_test_images"] == 1000  # smoke: eval_size None, the whole (1,000-image) test split
            and len(r["clean_acc_per_class"]) == 10
            and r["epochs"] == 1
            and abs(r["der_of_paper_averages"] - 0.97555) < 1e-6
        ),
    },
    "01": {
        "figures": ["trigger_gallery", "trigger_explorer", "attack_results"],
        "results": lambda r: (
            0 <= r["clean_acc"] <= 1
            and list(r["attacks"]) == ["badnets", "blended", "inputaware", "lf", "sig", "ssba", "trojan", "wanet"]
            and all(0 <= a[m] <= 1 for a in r["attacks"].values() for m in ("acc", "asr", "ra", "target_class_acc"))
            and all(r["attacks"][n]["poisoned"] == 200 for n in ("badnets", "blended", "lf", "ssba", "trojan"))
            and 0 < r["attacks"]["sig"]["poisoned"] <= 200
            and r["attacks"]["wanet"]["poisoned"] == r["attacks"]["inputaware"]["poisoned"] == 0
            and r["attacks"]["ssba"]["psnr"] >= 26
            and r["attacks"]["badnets"]["linf"] >= 0.9
            and 0 <= r["second_clean_acc"] <= 1
            and all(0 <= a[f] <= 1 for a in r["attacks"].values() for f in ("floor_asr", "floor_asr_second_clean"))
        ),
    },
    "02": {
        "figures": ["nwc_scatter_last_layer", "nwc_scatter_all_layers", "per_layer_correlation", "top_k_overlap"],
        "results": lambda r: (
            list(r["attacks"]) == ALL_ATTACKS
            and r["layer"] == "layer4.1.conv2"
            and len(r["layers"]) == 17 and r["layers"][-1] == "layer4.1.conv2" and r["neurons"] == 244  # width 4
            and r["stage1_share"] == 0.25 and r["shuffle_draws"] == 50
            and all(
                -1 <= a[w][c] <= 1
                for a in r["attacks"].values()
                for w in ("last_layer", "all_layers", "all_layers_log10", "standardized")
                for c in ("pearson", "spearman")
            )
            and all(0 < a["all_layers_log10"]["kept"] <= 244 for a in r["attacks"].values())
            # per layer: every conv layer, a coefficient in [-1, 1] (None only for a layer that did not move)
            and all(list(a["per_layer"]) == r["layers"] for a in r["attacks"].values())
            and all(
                v is None or -1 <= v <= 1
                for a in r["attacks"].values()
                for c in a["per_layer"].values()
                for v in c.values()
            )
            and all(0 <= a["per_layer_spearman_positive"] <= 17 for a in r["attacks"].values())
            and all(0 <= a["stage1_shuffles_beaten"] <= 50 for a in r["attacks"].values())
            and all(
                1 <= a["clean_unlearn_epochs"] <= 3 and 1 <= a["poison_unlearn_epochs"] <= 3
                for a in r["attacks"].values()
            )
            and all(0 <= v <= 1 for a in r["attacks"].values() for v in a["top_k_overlap"].values())
            # the layer-preserving baseline at every share of the overlap, and the range of its shuffles
            and all(
                list(a["top_k_layer_preserving"]) == list(a["top_k_overlap"]) == list(a["top_k_shuffle_range"])
                and "0.25" in a["top_k_overlap"]
                and all(0 <= v <= 1 for v in a["top_k_layer_preserving"].values())
                and all(0 <= lo <= hi <= 1 for lo, hi in a["top_k_shuffle_range"].values())
                for a in r["attacks"].values()
            )
        ),
    },
    "03": {
        "figures": ["activeness_sorted", "activeness_ratio", "activeness_vs_start_loss"],
        "results": lambda r: (
            list(r["attacks"]) == ALL_ATTACKS
            and r["clean_mean"] > 0
            and all(a["ratio"] > 0 and 0 <= a["ranks_above_clean"] <= 1 for a in r["attacks"].values())
            # the control: a second clean model (training seed 1), and the band it spans around 1
            and r["second_clean"]["train_seed"] == 1
            and r["second_clean"]["ratio"] > 0 and 0 <= r["second_clean"]["ranks_above_clean"] <= 1
            and 0 < r["control_band"][0] <= 1 <= r["control_band"][1]
            and abs(r["control_band"][0] * r["control_band"][1] - 1) < 1e-9
            and all(a["above_control_band"] == (a["ratio"] > r["control_band"][1]) for a in r["attacks"].values())
            # each model's starting point on the clean images
            and all(
                s["loss"] >= 0 and 0 <= s["acc"] <= 1
                for s in [r["clean_start"], r["second_clean"]["start"], *(a["start"] for a in r["attacks"].values())]
            )
            and -1 <= r["start_loss_ratio_spearman"] <= 1
            and r["wanet"]["others"] == 7 and 0 <= r["wanet"]["below_others"] <= 7
            and r["wanet"]["smallest"] == (r["wanet"]["below_others"] == 7)
            and r["sig_explanation_supported"] in (True, False, None)  # None: SIG inside the band, nothing to explain
            and (r["sig_explanation_supported"] is None) == (not r["attacks"]["sig"]["above_control_band"])
        ),
    },
    "04": {
        "figures": ["nwc_per_layer", "reinit_sweep", "choosing_n", "stage1_explorer"],
        "results": lambda r: (
            r["neuron_ratio"] == 0.25
            and r["rule_choice"] in (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 0.9)
            and len(r["sweep"]) == 8 * 7 * 2  # grid n: 0.05, 0.1, 0.2, 0.25 (the profile's), 0.3, 0.4, 0.5
            and all(0 <= row["acc"] <= 1 and 0 <= row["asr"] <= 1 for row in r["sweep"])
            and r["neuron_ratio"] in {row["n"] for row in r["sweep"]}
            and all(row["collapsed"] == (row["acc"] < r["near_chance_acc"]) for row in r["sweep"])
            and len(r["stage1_alone"]) == 8 * 2
        ),
    },
    "05": {
        "figures": [
            "finetune_curves", "tsbd_results", "shortcut_backdoored", "shortcut_after_tsbd", "brightness_explorer",
            "shortcut_layers", "photometric_variant",
        ],
        "results": lambda r: (
            list(r["attacks"]) == ALL_ATTACKS
            and r["config"]["epochs"] == 2
            and all(len(c[k]) == 2 for c in r["curves"].values() for k in ("vanilla", "tsbd"))
            and all(0 <= a["asr_tsbd"] <= 1 and 0 <= a["der_tsbd"] <= 1 for a in r["attacks"].values())
            # the table's columns, each DER computed from its own ACC / ASR pairs, the average their mean
            and all(set(a) == TSBD_COLUMNS for a in r["attacks"].values()) and set(r["average"]) == TSBD_COLUMNS
            and all(
                abs(a[f"der_{m}"] - _der(a["acc_backdoored"], a["asr_backdoored"], a[f"acc_{m}"], a[f"asr_{m}"])) < 1e-9
                for a in r["attacks"].values() for m in ("tsbd", "vanilla_ft")
            )
            and all(abs(r["average"][k] - sum(a[k] for a in r["attacks"].values()) / 8) < 1e-9 for k in TSBD_COLUMNS)
            # the shortcut tables: two clean models and eight backdoored ones, every generic perturbation
            and len(r["shortcut"]["generic_before"]) == len(r["shortcut"]["cross_before"]) == 10
            and all(len(row) == 8 for row in r["shortcut"]["generic_before"].values())
            and all(len(row) == 8 for row in r["shortcut"]["cross_after_tsbd"].values())
            and len(r["shortcut"]["response_ratio"]) == 8 and len(r["shortcut"]["stage1_share"]) == 8
            and list(r["photometric"]["attacks"]) == ALL_ATTACKS
            and all(0 <= a["asr_tsbd_plus_lift"] <= 1 and 0 <= a["acc_vanilla_ft_plus_lift"] <= 1
                    for a in r["photometric"]["attacks"].values())
            and r["photometric"]["config"] == {"prob": 0.5, "max_offset": 0.3, "max_blend": 0.3}
        ),
    },
    "06": {
        "figures": [
            "fp_pruning", "nc_anomaly", "nc_triggers", "clp_uclc", "ibau_perturbations", "pruning_masks",
            "baseline_results",
        ],
        "results": lambda r: (
            r["defenses"] == ["ft", "fp", "nad", "nc", "anp", "clp", "ibau", "rnp"]
            and r["attacks"] == ALL_ATTACKS
            and all(
                0 <= run[m] <= 1 and run["seconds"] >= 0
                for d in r["runs"].values()
                for run in d.values()
                for m in ("acc", "asr", "ra")
            )
            and all(isinstance(run["record"]["flagged"], list) for run in r["runs"]["nc"].values())
            and set(r["average"]) == {"FT", "FP", "NAD", "NC", "ANP", "CLP", "i-BAU", "RNP"}
            and all(
                abs(run["der"] - _der(r["before"][n]["acc"], r["before"][n]["asr"], run["acc"], run["asr"])) < 1e-9
                for d in r["runs"].values() for n, run in d.items()
            )
            # a defense changed the model exactly when it had something to do
            and all(run["weight_change"] > 0 for d in ("ft", "fp", "nad", "ibau") for run in r["runs"][d].values())
            and all((run["weight_change"] > 0) == bool(run["record"]["flagged"]) for run in r["runs"]["nc"].values())
            and all(
                (run["weight_change"] > 0) == (run["record"]["pruned"] > 0)
                for d in ("anp", "clp", "rnp") for run in r["runs"][d].values()
            )
        ),
    },
    "07": {
        "figures": ["der_heatmap", "der_vs_compute"],
        "files": [f"07_table1{part}.{kind}" for part in ("", "_extra") for kind in ("csv", "md", "tex")]
        + ["07_table1.json"],
        "results": lambda r: (
            r["attacks"] == ALL_ATTACKS
            and r["methods"] == ["No defense", "FT", "FP", "NAD", "NC", "ANP", "CLP", "i-BAU", "RNP", "TSBD"]
            and set(r["table1"]) == set(r["methods"])  # the results file sorts its keys: sets, not lists
            and all(set(r["table1"][m]) == {*TITLES, "average"} for m in r["methods"])
            and all(r["table1"]["No defense"][a]["DER"] is None for a in r["table1"]["No defense"])
            # each DER from its own ACC / ASR against the backdoored model's; the average row the mean of the rows
            and all(
                abs(cells[a]["DER"] - 100 * _der(*(r["table1"]["No defense"][a][k] / 100 for k in ("ACC", "ASR")),
                                                 cells[a]["ACC"] / 100, cells[a]["ASR"] / 100)) < 1e-9
                for m, cells in r["table1"].items() if m != "No defense" for a in TITLES
            )
            and all(
                abs(cells["average"][k] - sum(cells[a][k] for a in TITLES) / 8) < 1e-9
                for m, cells in r["table1"].items() for k in ("ACC", "ASR", "DER") if cells["average"][k] is not None
            )
            and r["extras"] == ["Clean model (trigger floor)", "vanilla FT (TSBD's loop)", "FT at 2 epochs",
                                "NAD at 2 epochs", "TSBD + lift", "vanilla FT + lift", "FP (oracle choice)",
                                "ANP (oracle choice)"]
            and set(r["extra"]) == {"No defense", *r["extras"]}
            and r["extra"]["No defense"] == r["table1"]["No defense"]
            and set(r["budgets"]) == {*r["methods"][1:], *r["extras"][1:4]}
            and r["best_average_der"] in r["methods"][1:] and 1 <= r["tsbd_place"] <= 9
            and set(r["sources"]) == {*r["methods"][1:], *r["extras"][1:]}
            and all(len(keys) == 8 for keys in r["sources"].values())
            and r["provenance"]["profile"] == "smoke"
        ),
    },
    "08": {
        "figures": ["n_stage1", "n_stage2", "m_r_alpha", "reinit_schemes", "finetune_schemes", "data_ratios",
                    "nwc_fp", "seed_spread"],
        "files": [f"08_{part}.csv" for part in ABLATION_TABLES],
        "results": lambda r: (
            set(r["tables"]) == set(ABLATION_TABLES) and r["files"] == [f"08_{p}.csv" for p in ABLATION_TABLES]
            # stage 1 alone: all eight attacks at the eleven values of the official sweep
            and len(r["tables"]["n_stage1"]) == 8 * 11
            and {row["attack"] for row in r["tables"]["n_stage1"]} == set(TITLES)
            and all(row["rule n"] in OFFICIAL_N for row in r["tables"]["n_choices_stage1"])
            # after stage 2: the plan's n plus the profile's 0.25; three choices per attack, the oracle labelled
            and {row["n"] for row in r["tables"]["n_stage2"]} >= {0.1, 0.25}
            and [row["choice"] for row in r["tables"]["n_choices_stage2"]] == [
                "profile's n (clean rule, 8 models)", "this model's clean-rule n", "oracle n (test set)"]
            and r["tables"]["n_choices_stage2"][0]["n"] == 0.25
            and {(row["setting"], row["value"]) for row in r["tables"]["m_r_alpha"]}
            == {("m", 0.7), ("m", 1.0), ("r", 0.05), ("r", 0.2), ("alpha", 0.0), ("alpha", 0.7)}
            and len(r["tables"]["reinit_schemes"]) == 3 * 2
            # TSBD and the random re-draw reset the same weights; whole neurons more
            and len({r_["weights reset"] for r_ in r["tables"]["reinit_schemes"] if "whole" not in r_["scheme"]}) == 1
            and min(row["weights reset"] for row in r["tables"]["reinit_schemes"] if "whole" in row["scheme"])
            > max(row["weights reset"] for row in r["tables"]["reinit_schemes"] if "whole" not in row["scheme"])
            and len(r["tables"]["finetune_schemes"]) == 2 * 2 * 3 - 2  # no fine-tuning: nothing to lift
            and {(row["part"], row["ratio"]) for row in r["tables"]["data_ratios"]}
            == {("clean share", 0.05), ("clean share", 0.1), ("poisoning ratio", 0.05), ("poisoning ratio", 0.1)}
            and [row["clean images"] for row in r["tables"]["data_ratios"]][:2] == [100, 200]
            and len(r["tables"]["nwc_fp"]) == 2 * 8
            and {row["seed"] for row in r["tables"]["seed_spread"]} == {0, 1}
            and len(r["best_baselines"]) == 2 and "tsbd" not in r["best_baselines"]
            and all(0 <= row[m] <= 1 for t in ("n_stage2", "m_r_alpha", "nwc_fp", "seed_spread")
                    for row in r["tables"][t] for m in ("ACC", "ASR", "DER"))
            and any("Blended" in line for line in r["left_out"])
        ),
    },
}


TITLES = ["BadNets", "Blended", "Input-aware", "LF", "SIG", "SSBA", "Trojan", "WaNet"]


TSBD_COLUMNS = {  # notebook 05's table, as its results file names the columns
    "acc_backdoored", "asr_backdoored", "acc_stage_1", "asr_stage_1", "acc_vanilla_ft", "asr_vanilla_ft",
    "acc_tsbd", "asr_tsbd", "ra_tsbd", "der_vanilla_ft", "der_tsbd",
}


def _der(acc_bd, asr_bd, acc, asr):
    return metrics.defense_effectiveness_rating(acc_bd, asr_bd, acc, asr)


def test_the_suite_has_its_notebooks_in_order():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_overview.ipynb"
    assert [p.name[:2] for p in NOTEBOOKS] == sorted(p.name[:2] for p in NOTEBOOKS)
    assert {p.name[:2] for p in NOTEBOOKS} <= set(EXPECTED), "add expectations for every notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs (make strip)"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    tree = ast.parse(tagged[0].source)
    values = {}
    for statement in tree.body:  # literals only: papermill overrides them, nothing is derived
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.unparse(statement)
        values[statement.targets[0].id] = ast.literal_eval(statement.value)
    for name, default in REQUIRED_PARAMETERS.items():
        assert name in values and values[name] == default, name
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert nb.cells[-1].cell_type == "markdown" and "take away" in nb.cells[-1].source.lower()


def _run(path: Path, tmp: Path, cache_dir: str, **extra) -> tuple[dict, nbformat.NotebookNode, Path]:
    figures, runs = tmp / "figures", tmp / "runs"
    parameters = {"PROFILE": "smoke", "FIGURES_DIR": str(figures), "RUN_DIR": str(runs), "CACHE_DIR": cache_dir,
                  **extra}
    out = runs / path.name
    reproduce.run_notebook(path, out, parameters, timeout=600)
    executed = nbformat.read(out, as_version=4)
    results = json.loads((runs / f"{path.name[:2]}_results.json").read_text())
    return results, executed, figures


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> Path:
    """The results files of this session's smoke runs, one per notebook: a bundle is chosen from them."""
    return tmp_path_factory.mktemp("smoke-runs")


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_the_smoke_profile(path, tmp_path, cache_dir, smoke_runs):
    number = path.name[:2]
    committed = {p.name: p.stat().st_mtime_ns for p in (NOTEBOOKS_DIR.parent / "figures").glob("*.png")}
    results, executed, figures = _run(path, tmp_path, cache_dir)
    (smoke_runs / f"{number}_results.json").write_text(json.dumps(results))
    assert committed == {p.name: p.stat().st_mtime_ns for p in (NOTEBOOKS_DIR.parent / "figures").glob("*.png")}
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    for slug in EXPECTED[number]["figures"]:
        png = figures / f"{number}_{slug}.png"
        assert png.is_file() and png.stat().st_size > 5000, png
    for name in EXPECTED[number].get("files", []):  # exported tables beside the figures
        assert (figures / name).is_file() and (figures / name).stat().st_size > 0, name
    assert all(p.name.startswith(f"{number}_") for p in figures.iterdir())
    # A learner sees every figure where it is made: the notebook shows each saved PNG, byte for byte.
    shown = [base64.b64decode(o.data["image/png"]) for c in executed.cells if c.cell_type == "code"
             for o in c.outputs if "image/png" in o.get("data", {})]
    saved = [p.read_bytes() for p in sorted(figures.glob("*.png"))]
    assert sorted(shown) == sorted(saved) and saved
    assert results["provenance"]["profile"] == "smoke" and results["meaningful"] is False
    assert EXPECTED[number]["results"](results["results"]), results["results"]


@pytest.mark.notebook
def test_a_second_run_loads_the_clean_model_from_the_cache(tmp_path, cache_dir):
    first, _, _ = _run(NOTEBOOKS_DIR / "00_overview.ipynb", tmp_path / "a", cache_dir)
    second, _, _ = _run(NOTEBOOKS_DIR / "00_overview.ipynb", tmp_path / "b", cache_dir)
    assert second["results"]["loaded_from_cache"] is True and second["cache"]["misses"] == 0
    assert second["results"]["clean_acc"] == first["results"]["clean_acc"]


@pytest.mark.notebook
def test_a_second_run_of_the_defenses_is_read_from_the_cache(tmp_path, cache_dir):
    subset = {"ATTACK_NAMES": ["badnets"], "DEFENSE_NAMES": ["ft", "nc"]}
    first, _, _ = _run(NOTEBOOKS_DIR / "06_baseline_defenses.ipynb", tmp_path / "a", cache_dir, **subset)
    second, _, _ = _run(NOTEBOOKS_DIR / "06_baseline_defenses.ipynb", tmp_path / "b", cache_dir, **subset)
    assert second["cache"]["misses"] == 0 and second["cache"]["hits"] > 0
    assert second["results"]["runs"] == first["results"]["runs"]  # numbers, records and times, all read back


def _without_cache_state(value):
    """A results value without what says whether it was computed or read (the same numbers either way)."""
    if isinstance(value, dict):
        return {k: _without_cache_state(v) for k, v in value.items() if k != "loaded_from_cache"}
    if isinstance(value, list):
        return [_without_cache_state(v) for v in value]
    return value


@pytest.mark.notebook
def test_a_bundle_of_the_smoke_suite_serves_every_notebook_with_no_miss(tmp_path, cache_dir, smoke_runs):
    """Export the entries the smoke runs used, import them into an empty cache: every notebook then runs with no
    miss and writes the same results."""
    for path in NOTEBOOKS:  # run alone (pytest -k), this test makes the runs it bundles
        if not (smoke_runs / f"{path.name[:2]}_results.json").is_file():
            results, _, _ = _run(path, tmp_path / "first" / path.name[:2], cache_dir)
            (smoke_runs / f"{path.name[:2]}_results.json").write_text(json.dumps(results))
    archive = tmp_path / "smoke.zip"
    manifest = bundle.export(Path(cache_dir), smoke_runs, archive, profile="smoke")
    assert manifest["notebooks"] == [p.name[:2] for p in NOTEBOOKS]
    report = bundle.import_bundle(archive, tmp_path / "fresh", profile="smoke")
    assert len(report.placed) == len(manifest["entries"]) and not report.stale
    for path in NOTEBOOKS:
        number = path.name[:2]
        again, _, _ = _run(path, tmp_path / "again" / number, str(tmp_path / "fresh"))
        assert again["cache"]["misses"] == 0, (number, again["cache"]["misses"])
        first = json.loads((smoke_runs / f"{number}_results.json").read_text())
        assert _without_cache_state(again["results"]) == _without_cache_state(first["results"]), number
