"""Real results of the quick profile (make test-quick): slow, run on demand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tsbd_utils import reproduce

from .test_notebooks import NOTEBOOKS_DIR


def run_quick(notebook: str, tmp_path: Path, cache_dir: str) -> dict:
    """Run one notebook in the quick profile (temporary outputs, the session's cache); return its results."""
    runs = tmp_path / "r"
    parameters = {"PROFILE": "quick", "FIGURES_DIR": str(tmp_path / "f"), "RUN_DIR": str(runs), "CACHE_DIR": cache_dir}
    reproduce.run_notebook(NOTEBOOKS_DIR / notebook, runs / notebook, parameters, timeout=3600)
    return json.loads((runs / f"{notebook[:2]}_results.json").read_text())["results"]


@pytest.mark.slow
def test_quick_clean_model_reaches_89_percent(tmp_path, cache_dir):
    """Notebook 00: PreActResNet18 (width 16) on 20k Fashion-MNIST images, scored on 5,000 of the 10k test images."""
    results = run_quick("00_overview.ipynb", tmp_path, cache_dir)
    assert results["test_images"] == 10000 and results["train_images"] == 20000
    assert results["evaluated_test_images"] == 5000
    assert results["clean_acc"] >= 0.89, results["clean_acc"]


@pytest.mark.slow
def test_quick_attacks_reach_their_targets(tmp_path, cache_dir):
    """Notebook 01: every attack ASR >= 90% and ACC within 2 points of the clean model (SIG exempt)."""
    results = run_quick("01_backdoor_attacks.ipynb", tmp_path, cache_dir)
    assert len(results["attacks"]) == 8
    for name, r in results["attacks"].items():
        assert r["asr"] >= 0.90, (name, r["asr"])
        if name != "sig":
            assert results["clean_acc"] - r["acc"] <= 0.02, (name, r["acc"])
    assert results["attacks"]["sig"]["target_class_acc"] < 0.5  # clean-label SIG costs the target class, by design
    # The floor: no trigger fools a clean model much. Measured (seed 0): at most 4.2% on the clean model and 11.8%
    # (LF) on the second one; LF's earlier signed pattern, fitted on the first model, reached 23% on both.
    for name, r in results["attacks"].items():
        assert r["floor_asr"] <= 0.10 and r["floor_asr_second_clean"] <= 0.15, (name, r["floor_asr"])


@pytest.mark.slow
def test_quick_observations_hold(tmp_path, cache_dir):
    """Notebooks 02 and 03: both observations of the paper hold for every attack on the quick setting."""
    obs1 = run_quick("02_observation1_weight_changes.ipynb", tmp_path / "o1", cache_dir)
    # Measured (seed 0): last-layer Pearson 0.40-0.92, standardized per layer 0.23-0.49, per-layer Spearman above
    # 0 in 12-17 of 17 layers; at the top 10% the overlap beats the layer-preserving expectation by 0.22-0.47.
    for name, r in obs1["attacks"].items():
        assert r["clean_unlearn_reached"] and r["poison_unlearn_reached"], name
        assert r["last_layer"]["pearson"] > 0.3 and r["all_layers"]["pearson"] > 0.5, (name, r)
        assert r["standardized"]["pearson"] > 0.1, (name, r["standardized"])  # within layers, not only between
        assert r["per_layer_spearman_positive"] >= 10, (name, r["per_layer_spearman_positive"])
        overlap, expected = r["top_k_overlap"]["0.1"], r["top_k_layer_preserving"]["0.1"]
        assert overlap >= expected + 0.1, (name, overlap, expected)  # neurons, not just their layers
    # Measured: two clean models differ by x1.04; the backdoored models are x1.74 (Blended) to x7.44 (SIG).
    obs2 = run_quick("03_observation2_activeness.ipynb", tmp_path / "o2", cache_dir)
    band = obs2["control_band"]
    assert band[1] < 1.2, band
    assert all(r["ratio"] > 1.2 and r["above_control_band"] for r in obs2["attacks"].values()), obs2["attacks"]


@pytest.mark.slow
def test_quick_tsbd_removes_the_patch_warp_and_sample_specific_backdoors(tmp_path, cache_dir):
    """Notebook 05. Measured (seed 0): Blended, LF and SSBA survive TSBD (96, 95, 57%) and Trojan partly comes
    back (24%), so the average is not asserted; the other four attacks, the accuracy, the background shortcut and
    its clean-data test are."""
    results = run_quick("05_stage2_finetuning.ipynb", tmp_path, cache_dir)
    attacks = results["attacks"]
    removed = ["badnets", "inputaware", "sig", "wanet"]
    assert all(attacks[n]["asr_tsbd"] <= 0.15 for n in removed), {n: attacks[n]["asr_tsbd"] for n in removed}
    assert sum(attacks[n]["asr_tsbd"] for n in removed) / len(removed) <= 0.06
    average = results["average"]
    assert average["acc_backdoored"] - average["acc_tsbd"] <= 0.03, average
    # The shortcut: a +0.05 offset sends most images to the target on the global triggers' models, not on a clean one.
    generic = results["shortcut"]["generic_before"]
    assert all(generic[a]["offset +0.05"] >= 0.5 for a in ("Blended", "LF", "SSBA")), generic
    assert generic["clean"]["offset +0.05"] <= 0.1
    # Its test with clean data only: the photometric lift removes those three (measured 2-3%) at <= 3 points of ACC.
    lift = results["photometric"]["attacks"]
    for n in ("blended", "lf", "ssba"):
        assert lift[n]["asr_tsbd_plus_lift"] <= 0.1 and lift[n]["asr_vanilla_ft_plus_lift"] <= 0.1, (n, lift[n])
        assert lift[n]["acc_tsbd"] - lift[n]["acc_tsbd_plus_lift"] <= 0.03, (n, lift[n])


def check_baselines(results: dict) -> None:
    """What notebook 06's quick run must show (measured, seed 0: ANP and RNP average ASR 33%, largest ACC cost
    6.3 points, RNP); see :func:`test_quick_baselines_run_on_every_attack`."""
    baselines = ["ft", "fp", "nad", "nc", "anp", "clp", "ibau", "rnp"]
    assert results["defenses"] == baselines and len(results["attacks"]) == 8
    before, runs = results["before"], results["runs"]
    acc_before = sum(b["acc"] for b in before.values()) / len(before)
    for d in baselines:
        asr = sum(runs[d][n]["asr"] for n in results["attacks"]) / 8
        acc = sum(runs[d][n]["acc"] for n in results["attacks"]) / 8
        assert acc_before - acc <= 0.08, (d, acc, acc_before)
        if d in ("anp", "rnp"):  # the mask-pruning defenses remove most backdoors even on the quick schedule
            assert asr <= 0.6, (d, asr)
    for n, run in runs["nc"].items():  # nothing flagged: the model comes back unchanged, numbers and all
        if not run["record"]["flagged"]:
            assert (run["acc"], run["asr"]) == (before[n]["acc"], before[n]["asr"]), n
    assert any(run["record"]["flagged"] for run in runs["nc"].values())


@pytest.mark.slow
def test_quick_baselines_run_on_every_attack(tmp_path, cache_dir):
    """Notebook 06: the eight baselines on the eight backdoored models of the quick profile."""
    check_baselines(run_quick("06_baseline_defenses.ipynb", tmp_path, cache_dir))
