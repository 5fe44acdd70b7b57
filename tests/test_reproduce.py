from pathlib import Path

import nbformat
import pytest

from tsbd_utils import reproduce


def _notebook(path: Path, params: str = "PROFILE = 'quick'\nSEED = 0") -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(PROFILE, SEED)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_undeclared_parameters_are_an_error(tmp_path):
    nb = _notebook(tmp_path / "00_x.ipynb")
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
        _notebook(
            folder / name,
            "PROFILE = 'quick'\nDATASET = None\nSEED = 0\nDEVICE = 'auto'\n"
            "CACHE_DIR = None\nFIGURES_DIR = '.'\nRUN_DIR = None",
        )
    assert [p.name for p in reproduce.notebooks(folder)] == ["00_a.ipynb", "01_b.ipynb"]
    assert reproduce.main(["--profile", "fast", "--notebooks-dir", str(folder)]) == 2
    assert "unknown profile 'fast'; allowed: smoke, quick, paper" in capsys.readouterr().err
    assert reproduce.main(["--dataset", "svhn", "--notebooks-dir", str(folder)]) == 2
    assert reproduce.main(["--only", "07", "--notebooks-dir", str(folder)]) == 2
    assert "no notebook numbered 07; allowed: 00, 01" in capsys.readouterr().err
    run_dir = tmp_path / "runs"
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
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "01_b.ipynb" in out and "00_a.ipynb" not in out and "total" in out
    assert (run_dir / "01_b.ipynb").exists()
