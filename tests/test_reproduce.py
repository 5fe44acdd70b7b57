import dataclasses
import re
import urllib.error
from pathlib import Path

import nbformat
import pytest

from tsbd_utils import data, paths, reproduce

from .helpers import RUNNER_PARAMETERS, parameters_notebook
from .test_data import write_fmnist


def test_undeclared_parameters_are_an_error(tmp_path):
    nb = parameters_notebook(tmp_path / "00_x.ipynb")
    reproduce.check_parameters(nb, {"PROFILE": "smoke"})
    with pytest.raises(ValueError, match="does not declare parameter\\(s\\) EPOCHS; allowed: PROFILE, SEED"):
        reproduce.run_notebook(nb, tmp_path / "out.ipynb", {"PROFILE": "smoke", "EPOCHS": 2})
    assert not (tmp_path / "out.ipynb").exists()


def test_a_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, tmp_path / "00_x.ipynb")
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        reproduce.check_parameters(tmp_path / "00_x.ipynb", {"PROFILE": "smoke"})


def test_cli_runs_in_order_and_rejects_bad_names(tmp_path, capsys):
    folder = tmp_path / "nbs"
    folder.mkdir()
    for name in ("01_b.ipynb", "00_a.ipynb", "notes.ipynb"):
        parameters_notebook(folder / name, RUNNER_PARAMETERS, "print(PROFILE, SEED)")
    assert [p.name for p in paths.notebooks(folder)] == ["00_a.ipynb", "01_b.ipynb"]
    assert reproduce.main(["--profile", "fast", "--notebooks-dir", str(folder)]) == 2
    assert "unknown profile 'fast'; allowed: smoke, quick, paper" in capsys.readouterr().err
    assert reproduce.main(["--dataset", "svhn", "--notebooks-dir", str(folder)]) == 2
    assert reproduce.main(["--only", "07", "--notebooks-dir", str(folder)]) == 2
    assert "no notebook numbered '07'; allowed: 00, 01" in capsys.readouterr().err
    run_dir = tmp_path / "runs"
    write_fmnist(tmp_path / "data")
    assert (
        reproduce.main(
            [
                "--profile",
                "smoke",
                "--notebooks-dir",
                str(folder),
                "--run-dir",
                str(run_dir),
                "--figures-dir",
                str(tmp_path / "f"),
                "--only",
                "01",
                "--data-dir",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "01_b.ipynb" in out and "00_a.ipynb" not in out and "total" in out
    assert (run_dir / "01_b.ipynb").exists()


@pytest.mark.parametrize(  # the settings reproduce shares with the grid: tests/test_cli.py
    "extra, message",
    [
        (["--figures-dir", "{tmp}/a-file"], r"--figures-dir: the folder .*a-file cannot be used: .*a-file is a file"),
        (["--figures-dir", ""], r"--figures-dir must be a folder path \(a non-empty string\), got ''"),
        (["--notebooks-dir", "{tmp}/none"], r"--notebooks-dir .*none is not a folder"),
        (["--only", "07"], r"no notebook numbered '07'; allowed: 00"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys, extra, message):
    (tmp_path / "a-file").write_text("not a folder")
    folder = tmp_path / "nbs"
    folder.mkdir()
    parameters_notebook(folder / "00_a.ipynb", "PROFILE = 'smoke'")
    before = sorted(tmp_path.rglob("*"))
    argv = ["--profile", "smoke", "--notebooks-dir", str(folder), "--run-dir", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--figures-dir", str(tmp_path / "figs")]
    assert reproduce.main(argv + [e.format(tmp=tmp_path) for e in extra]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert sorted(tmp_path.rglob("*")) == before  # no folder created, no notebook run


def test_a_read_only_setting_that_is_not_understood_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TSBD_CACHE_READ_ONLY", "maybe")
    folder = tmp_path / "nbs"
    folder.mkdir()
    parameters_notebook(folder / "00_a.ipynb", "PROFILE = 'smoke'")
    assert reproduce.main(["--profile", "smoke", "--notebooks-dir", str(folder), "--run-dir", str(tmp_path / "r"),
                           "--cache-dir", str(tmp_path / "c"), "--figures-dir", str(tmp_path / "f")]) == 2
    assert "$TSBD_CACHE_READ_ONLY='maybe' is not understood; allowed: 1, true, yes, 0, false, no or unset" in (
        capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nbs"]


def test_a_named_data_folder_without_the_dataset_is_refused_before_any_notebook(tmp_path, capsys, monkeypatch):
    def offline(root: Path) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    spec = data.DATASETS["fashion_mnist"]
    monkeypatch.setitem(data.DATASETS._items, "fashion_mnist", dataclasses.replace(spec, fetch=offline))
    (tmp_path / "empty").mkdir()
    err = _refused_with_nothing_written(tmp_path, capsys, "--data-dir", str(tmp_path / "empty"))
    assert re.search(r"Fashion-MNIST .* not found; looked in: .*empty; the torchvision download failed", err), err


def _refused_with_nothing_written(tmp_path: Path, capsys, *extra: str) -> str:
    """Run the CLI on one tiny notebook with ``extra``; assert it exits 2 having written nothing; its stderr."""
    folder = tmp_path / "nbs"
    folder.mkdir()
    parameters_notebook(folder / "00_a.ipynb", "PROFILE = 'smoke'")
    before = sorted(tmp_path.rglob("*"))
    assert reproduce.main(["--profile", "smoke", "--notebooks-dir", str(folder), "--run-dir", str(tmp_path / "r"),
                           "--cache-dir", str(tmp_path / "c"), "--figures-dir", str(tmp_path / "f"), *extra]) == 2
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no notebook run
    return capsys.readouterr().err


def test_a_damaged_dataset_is_refused_before_any_notebook(tmp_path, capsys):
    write_fmnist(tmp_path / "data", compress=False)
    labels = tmp_path / "data" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])  # cut short: 6 labels announced, 3 there
    err = _refused_with_nothing_written(tmp_path, capsys, "--data-dir", str(tmp_path / "data"))
    assert re.search(r"Fashion-MNIST in .*data is damaged: .*t10k-labels-idx1-ubyte.*Reinstall it", err), err


def test_readme_table_is_refreshed_between_its_markers_only(tmp_path):
    export = tmp_path / "07_table1.md"
    export.write_text("Caption\n\n| attack | TSBD |\n|:---|---:|\n| BadNets | 1 / 2 / 3 |\n")
    readme = tmp_path / "README.md"
    start, end = reproduce.TABLE_MARKERS
    readme.write_text(f"# Title\n\n{start}\n| old | table |\n{end}\n\nafter\n")
    assert reproduce.refresh_readme_table(readme, export)
    assert readme.read_text() == (
        f"# Title\n\n{start}\n| attack | TSBD |\n|:---|---:|\n| BadNets | 1 / 2 / 3 |\n{end}\n\nafter\n"
    )
    plain = tmp_path / "plain.md"
    plain.write_text("# No markers here\n")
    assert not reproduce.refresh_readme_table(plain, export) and plain.read_text() == "# No markers here\n"
