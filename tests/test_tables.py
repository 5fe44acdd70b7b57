"""Table 1: built from the methods' results (never typed), DER and its average, budgets, exports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tsbd_utils import config, metrics, session, tables, zoo
from tsbd_utils.attacks import ATTACKS
from tsbd_utils.defenses import DEFENSES, FineTuning, TSBDConfig
from tsbd_utils.training import epoch_steps

# Hand-picked (ACC, ASR) pairs, fractions: before (the backdoored model) and after one defense.
BEFORE = {"badnets": (0.90, 1.00), "blended": (0.80, 0.50)}
AFTER = {"badnets": (0.88, 0.10), "blended": (0.85, 0.70)}  # on Blended the defense raised the ASR


def _long() -> pd.DataFrame:
    rows = []
    for attack in BEFORE:
        (acc_bd, asr_bd), (acc, asr) = BEFORE[attack], AFTER[attack]
        rows.append({"method": "No defense", "attack": attack, "ACC": acc_bd, "ASR": asr_bd, "RA": 0.0, "DER": 0.5,
                     "seconds": math.nan})
        der = metrics.defense_effectiveness_rating(acc_bd, asr_bd, acc, asr)
        rows.append({"method": "X", "attack": attack, "ACC": acc, "ASR": asr, "RA": 0.5, "DER": der, "seconds": 1.0})
    return pd.DataFrame(rows)


def test_der_and_its_average_match_hand_computed_values():
    table = tables.table1(_long(), titles={"badnets": "BadNets", "blended": "Blended"}, before="No defense")
    # BadNets: [(1.00 - 0.10) - (0.90 - 0.88) + 1] / 2 = 0.94; Blended: no gain, no loss -> 0.5.
    assert table.loc["BadNets", ("X", "DER")] == pytest.approx(0.94)
    assert table.loc["Blended", ("X", "DER")] == pytest.approx(0.5)
    # The average DER is the mean of the per-attack DERs (0.72), not the DER of the averaged ACC and ASR
    # (0.675: ASR 0.75 -> 0.40, ACC 0.85 -> 0.865), as the paper computes it.
    assert table.loc["average", ("X", "DER")] == pytest.approx(0.72)
    assert metrics.defense_effectiveness_rating(0.85, 0.75, 0.865, 0.40) == pytest.approx(0.675)
    assert table.loc["average", ("X", "ASR")] == pytest.approx(0.40)
    # No defense has no DER, as in the paper; its ACC / ASR are the backdoored models'.
    assert table[("No defense", "DER")].isna().all()
    assert table.loc["BadNets", ("No defense", "ASR")] == 1.0
    assert list(table.columns) == [(m, k) for m in ("No defense", "X") for k in ("ACC", "ASR", "DER")]
    assert list(table.index) == ["BadNets", "Blended", "average"]


def test_table1_refuses_unknown_methods_and_metrics():
    with pytest.raises(ValueError, match="method.*'Y'.*available: No defense, X"):
        tables.table1(_long(), ["X", "Y"])
    with pytest.raises(ValueError, match="unknown metric.*'PSNR'.*allowed: ACC, ASR, RA, DER"):
        tables.table1(_long(), metrics=("ACC", "PSNR"))


def test_exports_round_trip(tmp_path):
    table = tables.table1(_long(), titles={"badnets": "BadNets", "blended": "Blended"}, before="No defense")
    paths = tables.write_table(table, tmp_path, "t1", caption="Table 1 at 5% clean data")
    back = tables.read_table(paths["csv"])
    pd.testing.assert_frame_equal(back, 100 * table, check_exact=True)  # every value, NaN included
    markdown = paths["md"].read_text()
    assert "| BadNets | 90.0 / 100.0 / - | 88.0 / 10.0 / 94.0 |" in markdown
    assert "| **average** |" in markdown and markdown.startswith("Table 1 at 5% clean data")
    latex = paths["tex"].read_text()
    assert "\\toprule" in latex and "5\\% clean data" in latex and "\\label{tab:t1}" in latex
    assert "BadNets & 90.0 / 100.0 / - & 88.0 / 10.0 / 94.0 \\\\" in latex
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.csv", "t1.md", "t1.tex"]  # no temporary files left


def test_ranking_orders_by_der_and_by_asr_the_other_way():
    rows = [{"method": m, "attack": "badnets", "ACC": 0.9, "ASR": asr, "RA": 0, "DER": der, "seconds": 0}
            for m, asr, der in (("A", 0.1, 0.9), ("B", 0.3, 0.9), ("C", 0.5, 0.6))]
    table = tables.table1(pd.DataFrame(rows))
    assert tables.ranking(table, "DER").loc["badnets"].tolist() == [1, 1, 3]  # ties share the better rank
    assert tables.ranking(table, "ASR").loc["badnets"].tolist() == [1, 2, 3]  # lower ASR is better
    assert tables.ranking(table, "DER", ["C", "A"]).loc["mean rank"].tolist() == [2, 1]


def test_paper_averages_are_the_registry_values():
    paper = tables.paper_averages(["No defense", "TSBD", "FT at 21 epochs"], "No defense")
    assert paper.loc["TSBD"].tolist() == list(DEFENSES["tsbd"].paper_average)
    assert paper.loc["No defense", "paper ASR"] == tables.PAPER_NO_DEFENSE[1]
    assert paper.loc["FT at 21 epochs"].isna().all()  # not a column of the paper


def test_budgets_count_the_optimizer_steps_of_each_defense():
    quick = config.resolve("quick")
    assert epoch_steps(1000, 256) == 4 and epoch_steps(257, 256) == 1  # a last batch of one folds into the previous
    ft = DEFENSES["ft"].budget(DEFENSES["ft"].for_profile(quick), 1000, None)
    assert (ft.steps, ft.examples, ft.images, ft.passes) == (40, 10 * 1000, 1000, "10 fine-tuning epochs")
    nad = DEFENSES["nad"].budget(DEFENSES["nad"].for_profile(quick), 1000, None)
    assert (nad.steps, nad.examples) == (4 * (1 + 10), 1000 * (1 + 10))
    anp = DEFENSES["anp"].budget(DEFENSES["anp"].for_profile(quick), 1000, None)
    assert (anp.steps, anp.examples) == (40 * 2, 40 * 2 * 256)  # a noise ascent step, then a mask step
    tsbd = DEFENSES["tsbd"].budget(TSBDConfig.for_profile(quick), 1000, {"unlearn_epochs": 13})
    assert tsbd.steps == 13 * 4 + 21 * 4 and tsbd.examples == (13 + 21) * 1000 and "activeness-aware" in tsbd.passes
    assert DEFENSES["clp"].budget(DEFENSES["clp"].for_profile(quick), 1000, None).steps == 0
    rnp = DEFENSES["rnp"].budget(
        DEFENSES["rnp"].for_profile(quick), 1000,
        {"clean_images": 200, "unlearning": {"epochs": 3}, "recovery": {"epochs": 20}},
    )
    assert (rnp.steps, rnp.examples, rnp.images) == ((3 + 20) * 1, (3 + 20) * 200, 1000)
    nc_config = DEFENSES["nc"].for_profile(quick)
    nc = DEFENSES["nc"].budget(nc_config, 1000, {"reverse_epochs": [30] * 9 + [80], "unlearned": True})
    per_epoch = math.ceil(min(1000, nc_config.epoch_images or 1000) / nc_config.batch_size)
    assert nc.steps == 80 * per_epoch + nc_config.finetune.steps(1000)  # the 10 labels share one optimizer
    images = min(1000, nc_config.epoch_images or 1000)
    assert nc.examples == 80 * 10 * images + nc_config.finetune.epochs * 1000  # a group runs to its longest
    with pytest.raises(ValueError, match="pass the run's record"):
        DEFENSES["nc"].budget(nc_config, 1000, None)


def test_matched_config_stretches_fine_tuning_to_the_given_epochs():
    S = type("S", (), {"profile": config.resolve("quick")})
    assert zoo.matched_config(S, "ft", 21).finetune == FineTuning(epochs=21)
    nad = zoo.matched_config(S, "nad", 21)
    assert (nad.teacher_epochs, nad.finetune.epochs) == (2, 21)  # the teacher keeps its tenth
    with pytest.raises(ValueError, match="'nc' has no fine-tuning recipe to match; allowed: ft, fp, nad"):
        zoo.matched_config(S, "nc", 21)
    with pytest.raises(ValueError, match="'anp' has no fine-tuning recipe to match; allowed: ft, fp, nad"):
        zoo.matched_config(S, "anp", 21)
    with pytest.raises(ValueError, match="epochs must be an int >= 1, got 0"):
        zoo.matched_config(S, "ft", 0)


@pytest.mark.notebook
def test_smoke_table_cells_are_the_methods_results(tmp_path, cache_dir):
    """Every cell of the smoke Table 1 equals a fresh evaluation of the model it came from, and every
    DER the formula on those numbers (models from the shared test cache, trained on a miss)."""
    S = session.start("07", profile="smoke", cache_dir=cache_dir, figures_dir=str(tmp_path), run_dir=str(tmp_path))
    names = list(ATTACKS)
    runs = zoo.main_runs(S, names)
    long = zoo.evaluation_table(S, runs, before=zoo.NO_DEFENSE)
    table = tables.table1(long, [zoo.NO_DEFENSE, *runs], {n: ATTACKS[n].title for n in names}, before=zoo.NO_DEFENSE)
    assert table.shape == (len(names) + 1, 3 * (len(runs) + 1)) and len(runs) == 9
    for n in names:
        bd = zoo.backdoored_model(S, n, progress=False)
        before = zoo.evaluate(S, bd.model, bd.attack)  # not through the cache
        row = table.loc[ATTACKS[n].title]
        assert (row[(zoo.NO_DEFENSE, "ACC")], row[(zoo.NO_DEFENSE, "ASR")]) == (before["acc"], before["asr"])
        for method, per_attack in runs.items():
            fresh = zoo.evaluate(S, per_attack[n].model, bd.attack)
            assert (row[(method, "ACC")], row[(method, "ASR")]) == (fresh["acc"], fresh["asr"]), (method, n)
            der = metrics.defense_effectiveness_rating(before["acc"], before["asr"], fresh["acc"], fresh["asr"])
            assert row[(method, "DER")] == pytest.approx(der, abs=1e-12), (method, n)
    for method in runs:
        per_attack = table.loc[table.index != "average", (method, "DER")]
        assert table.loc["average", (method, "DER")] == pytest.approx(per_attack.mean(), abs=1e-12)


def test_committed_quick_table_agrees_with_its_results_file_and_the_readme():
    """The committed quick-profile exports are one table: the CSV, the results file's numbers, and the Markdown
    table that README.md shows (copied from the export, never typed)."""
    root = Path(__file__).resolve().parents[1]
    figures = root / "figures"
    table = tables.read_table(figures / "07_table1.csv")
    record = json.loads((figures / "07_table1.json").read_text())
    assert record["provenance"]["profile"] == "quick" and record["units"] == "percent"
    for method, cells in record["table1"].items():
        for attack, values in cells.items():
            for metric, value in values.items():
                stored = table.loc[attack, (method, metric)]
                assert (value is None and math.isnan(stored)) or value == stored, (method, attack, metric)
    markdown = (figures / "07_table1.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    readme = (root / "README.md").read_text()
    assert len(rows) == 2 + 9 and "\n".join(rows) in readme
    assert "figures/07_der_heatmap.png" in readme


class _NoSession:
    """A session whose every use fails: a check that comes before any work never touches it."""

    def __getattr__(self, name):
        raise AssertionError(f"the session was used ({name}) before the names were checked")


@pytest.mark.parametrize("kwargs, message", [
    ({"names": ["badnet"]}, r"unknown attack\(s\) \['badnet'\]; allowed: badnets"),
    ({"names": "badnets"}, r"attack\(s\) must be a non-empty list of names, got 'badnets'"),
    ({"names": []}, r"attack\(s\) must be a non-empty list of names, got \[\]"),
    ({"baselines": ["tsbd"]}, r"unknown baseline\(s\) \['tsbd'\]; allowed: ft, fp"),
    ({"matched": ["bogus"]}, r"unknown same-budget control\(s\) \['bogus'\]; allowed: ft, fp, nad"),
    ({"oracles": ["ft"]}, r"unknown oracle choice\(s\) \['ft'\]; allowed: fp, anp, rnp"),
    ({"oracles": ["fp", "fp"]}, r"oracle choice\(s\) \['fp'\] named more than once"),
])
def test_table1_checks_every_name_before_computing_anything(kwargs, message):
    kwargs = {"names": ["badnets"], **kwargs}
    with pytest.raises(ValueError, match=message):
        zoo.assemble_table1(_NoSession(), kwargs.pop("names"), **kwargs)


def test_the_extras_default_to_the_grids_and_a_cell_shows_ra_only_when_asked():
    assert zoo.check_matched(None) == list(zoo.MATCHED) and zoo.check_oracles([]) == []
    assert tables.cell_metrics(False) == tables.CELL_METRICS and "RA" in tables.cell_metrics(True)
    with pytest.raises(ValueError, match=r"ra \(SHOW_RA\) must be True or False, got 'no'"):
        tables.cell_metrics("no")
