"""Every notebook: committed clean, and run headlessly through papermill in the smoke profile."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from tsbd_utils import reproduce

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = reproduce.notebooks(NOTEBOOKS_DIR)
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
        "figures": ["trigger_gallery", "attack_results"],
        "results": lambda r: (
            0 <= r["clean_acc"] <= 1
            and list(r["attacks"]) == ["badnets", "blended", "inputaware", "lf", "sig", "ssba", "trojan", "wanet"]
            and all(0 <= a[m] <= 1 for a in r["attacks"].values() for m in ("acc", "asr", "ra", "target_class_acc"))
            and all(r["attacks"][n]["poisoned"] == 200 for n in ("badnets", "blended", "lf", "ssba", "trojan"))
            and 0 < r["attacks"]["sig"]["poisoned"] <= 200
            and r["attacks"]["wanet"]["poisoned"] == r["attacks"]["inputaware"]["poisoned"] == 0
            and r["attacks"]["ssba"]["psnr"] >= 26
            and r["attacks"]["badnets"]["linf"] >= 0.9
        ),
    },
    "02": {
        "figures": ["nwc_scatter_last_layer", "nwc_scatter_all_layers", "top_k_overlap"],
        "results": lambda r: (
            list(r["attacks"]) == ALL_ATTACKS
            and r["layer"] == "layer4.1.conv2"
            and all(
                -1 <= a[w][c] <= 1
                for a in r["attacks"].values()
                for w in ("last_layer", "all_layers")
                for c in ("pearson", "spearman")
            )
            and all(
                1 <= a["clean_unlearn_epochs"] <= 3 and 1 <= a["poison_unlearn_epochs"] <= 3
                for a in r["attacks"].values()
            )
            and all(0 <= v <= 1 for a in r["attacks"].values() for v in a["top_k_overlap"].values())
        ),
    },
    "03": {
        "figures": ["activeness_sorted", "activeness_ratio"],
        "results": lambda r: (
            list(r["attacks"]) == ALL_ATTACKS
            and r["clean_mean"] > 0
            and all(a["ratio"] > 0 and 0 <= a["ranks_above_clean"] <= 1 for a in r["attacks"].values())
        ),
    },
    "04": {
        "figures": ["nwc_per_layer", "reinit_sweep", "choosing_n"],
        "results": lambda r: (
            r["neuron_ratio"] == 0.25
            and r["rule_choice"] in (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 0.9)
            and len(r["sweep"]) == 8 * 6 * 2
            and all(0 <= row["acc"] <= 1 and 0 <= row["asr"] <= 1 for row in r["sweep"])
        ),
    },
    "05": {
        "figures": ["finetune_curves", "tsbd_results"],
        "results": lambda r: (
            list(r["attacks"]) == ALL_ATTACKS
            and r["config"]["epochs"] == 2
            and all(len(c[k]) == 2 for c in r["curves"].values() for k in ("vanilla", "tsbd"))
            and all(0 <= a["asr_tsbd"] <= 1 and 0 <= a["der_tsbd"] <= 1 for a in r["attacks"].values())
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
        ),
    },
}


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


def _run(path: Path, tmp: Path, cache_dir: str) -> tuple[dict, nbformat.NotebookNode, Path]:
    figures, runs = tmp / "figures", tmp / "runs"
    parameters = {"PROFILE": "smoke", "FIGURES_DIR": str(figures), "RUN_DIR": str(runs), "CACHE_DIR": cache_dir}
    out = runs / path.name
    reproduce.run_notebook(path, out, parameters, timeout=600)
    executed = nbformat.read(out, as_version=4)
    results = json.loads((runs / f"{path.name[:2]}_results.json").read_text())
    return results, executed, figures


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_the_smoke_profile(path, tmp_path, cache_dir):
    number = path.name[:2]
    committed = {p.name: p.stat().st_mtime_ns for p in (NOTEBOOKS_DIR.parent / "figures").glob("*.png")}
    results, executed, figures = _run(path, tmp_path, cache_dir)
    assert committed == {p.name: p.stat().st_mtime_ns for p in (NOTEBOOKS_DIR.parent / "figures").glob("*.png")}
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    for slug in EXPECTED[number]["figures"]:
        png = figures / f"{number}_{slug}.png"
        assert png.is_file() and png.stat().st_size > 5000, png
    assert all(p.name.startswith(f"{number}_") for p in figures.iterdir())
    assert results["provenance"]["profile"] == "smoke" and results["meaningful"] is False
    assert EXPECTED[number]["results"](results["results"]), results["results"]


@pytest.mark.notebook
def test_a_second_run_loads_the_clean_model_from_the_cache(tmp_path, cache_dir):
    first, _, _ = _run(NOTEBOOKS_DIR / "00_overview.ipynb", tmp_path / "a", cache_dir)
    second, _, _ = _run(NOTEBOOKS_DIR / "00_overview.ipynb", tmp_path / "b", cache_dir)
    assert second["results"]["loaded_from_cache"] is True and second["cache"]["misses"] == 0
    assert second["results"]["clean_acc"] == first["results"]["clean_acc"]
