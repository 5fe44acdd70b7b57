"""The settings that `python -m tsbd_utils.reproduce` and `python -m tsbd_utils.grid` share: one check, the same
messages, nothing written when a setting is refused."""

import os
import re
from pathlib import Path

import pytest

from tsbd_utils import cli, reproduce
from tsbd_utils.grid import __main__ as grid_cli

from .helpers import RUNNER_PARAMETERS, parameters_notebook
from .test_data import write_fmnist


def _reproduce(tmp: Path, extra: list[str]) -> int:
    folder = tmp / "nbs"
    if not folder.exists():
        parameters_notebook(folder / "00_a.ipynb")
    return reproduce.main(["--profile", "smoke", "--notebooks-dir", str(folder), "--run-dir", str(tmp / "runs"),
                           "--cache-dir", str(tmp / "cache"), "--figures-dir", str(tmp / "figs"), *extra])


def _grid(tmp: Path, extra: list[str]) -> int:
    return grid_cli.main(["--profile", "smoke", "--attacks", "badnets", "--inline", "--run-dir", str(tmp / "runs"),
                      "--cache-dir", str(tmp / "cache"), *extra])


COMMANDS = {"reproduce": _reproduce, "grid": _grid}

BAD = [
    (["--seed", "-1"], "--seed must be an int in 0..4294967295, got -1"),
    (["--seed", "18446744073709551616"], "--seed must be an int in 0..4294967295, got 18446744073709551616"),
    (["--profile", "huge"], "unknown profile 'huge'; allowed: smoke, quick, paper"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; allowed: fashion_mnist"),
    (["--device", "tpu"], "unknown device 'tpu'; allowed: auto, cpu, cuda, cuda:N, mps"),
    (["--device", "cuda:0"], "CUDA is not available here"),
    (["--data-dir", "{tmp}/no-such-folder"], r"the data folder .*no-such-folder \(from DATA_DIR / --data-dir\) does"),
    (["--data-dir", "{tmp}/a-file"], r"the data folder .*a-file \(from DATA_DIR / --data-dir\) is a file"),
    (["--data-dir", ""], r"--data-dir must be a folder path \(a non-empty string\), got ''"),
    (["--cache-dir", ""], r"--cache-dir must be a folder path \(a non-empty string\), got ''"),
    (["--cache-dir", "{tmp}/a-file/cache"], r"--cache-dir: the cache folder .*a-file/cache cannot be used: .*a-file,"),
    (["--cache-dir", "{tmp}/loop"], r"--cache-dir: the cache folder .*loop cannot be used: .*loop is a symbolic link "
                                    r"that leads nowhere \(broken, or a loop\)"),
    (["--cache-dir", "{tmp}/loop/cache"], r"loop, on the way to .*loop/cache, is a symbolic link that leads nowhere"),
    (["--cache-read-only", "--cache-dir", "{tmp}/no-cache"],
     r"cache folder .*no-cache cannot be used: .*no-cache is not an existing folder \(a read-only cache"),
    (["--run-dir", "{tmp}/a-file"], r"--run-dir: the folder .*a-file.* cannot be used: .*a-file"),
    (["--run-dir", "{tmp}/loop"], r"--run-dir: the folder .*loop.* cannot be used: .*symbolic link that leads nowhere"),
    (["--run-dir", ""], r"--run-dir must be a folder path \(a non-empty string\), got ''"),
    # /proc takes no new folders, yet os.access says "writable" to root: the check must try, not ask
    (["--cache-dir", "/proc/tsbd-test-cache"], r"--cache-dir: the cache folder /proc/tsbd-test-cache cannot be used: "
                                               r"/proc is not writable \(needed to create /proc/tsbd-test-cache\)"),
    (["--run-dir", "/proc/tsbd-test-run"], r"--run-dir: the folder /proc/tsbd-test-run.* cannot be used: /proc is not"),
]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("extra, message", BAD)
def test_both_commands_refuse_a_bad_setting_alike_and_write_nothing(tmp_path, capsys, command, extra, message):
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # a symlink loop: exists() says False, mkdir fails
    if command == "reproduce":
        parameters_notebook(tmp_path / "nbs" / "00_a.ipynb")
    before = sorted(tmp_path.rglob("*"))
    assert COMMANDS[command](tmp_path, [e.format(tmp=tmp_path) for e in extra]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert sorted(tmp_path.rglob("*")) == before  # no folder created, no notebook or cell run


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_damaged_dataset_stops_both_commands_before_anything_runs(tmp_path, capsys, command):
    write_fmnist(tmp_path / "data")
    images = tmp_path / "data" / "train-images-idx3-ubyte.gz"
    raw = bytearray(images.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the deflate stream
    images.write_bytes(bytes(raw))
    if command == "reproduce":
        parameters_notebook(tmp_path / "nbs" / "00_a.ipynb")
    assert COMMANDS[command](tmp_path, ["--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"train-images-idx3-ubyte\.gz", err), err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_the_grid_refuses_to_compute_into_a_read_only_cache(tmp_path, capsys):
    (tmp_path / "cache").mkdir()
    assert _grid(tmp_path, ["--cache-read-only"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"cells have not finished in the read-only cache .*cache, which would keep none", err), err
    assert list((tmp_path / "cache").iterdir()) == []


def test_both_commands_name_the_same_options():
    helps = {}
    for name, parser in (("reproduce", reproduce._parser()), ("grid", grid_cli._parser())):
        helps[name] = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
    shared = ["--profile", "--dataset", "--seed", "--device", "--data-dir", "--cache-dir", "--cache-read-only"]
    for option in shared:
        assert helps["reproduce"][option] == helps["grid"][option], option
    assert "cuda:N" in helps["grid"]["--device"]


@pytest.mark.parametrize("variable, value, message", [
    ("TSBD_CACHE_DIR", "   ", r"\$TSBD_CACHE_DIR must be a folder path \(a non-empty string\), got '   '"),
    ("TSBD_DATA_DIR", "  ", r"\$TSBD_DATA_DIR must be a folder path \(a non-empty string\), got '  '"),
    ("TSBD_CACHE_DIR", "{tmp}/a-file", r"\$TSBD_CACHE_DIR: the cache folder .*a-file cannot be used"),
])
def test_the_environments_folders_are_checked_like_the_options(tmp_path, capsys, monkeypatch, variable, value,
                                                                 message):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv(variable, value.format(tmp=tmp_path))
    parameters_notebook(tmp_path / "nbs" / "00_a.ipynb")
    before = sorted(tmp_path.rglob("*"))
    argv = ["--profile", "smoke", "--notebooks-dir", str(tmp_path / "nbs"), "--run-dir", str(tmp_path / "runs"),
            "--figures-dir", str(tmp_path / "figs")]
    assert reproduce.main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert sorted(tmp_path.rglob("*")) == before


def test_relative_folders_reach_the_notebooks_as_the_absolute_ones_checked(tmp_path, monkeypatch):
    """A kernel runs in the notebooks' folder: a relative $TSBD_CACHE_DIR or $TSBD_DATA_DIR would mean another."""
    write_fmnist(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TSBD_CACHE_DIR", "relcache")
    monkeypatch.setenv("TSBD_DATA_DIR", "data")
    parser = reproduce._parser()
    settings = cli.check(parser.parse_args(["--profile", "smoke", "--run-dir", "runs"]))
    parameters = settings.parameters()
    assert parameters["CACHE_DIR"] == str(tmp_path / "relcache") and parameters["DATA_DIR"] == str(tmp_path / "data")
    assert parameters["RUN_DIR"] == str(tmp_path / "runs")


def test_a_broken_notebook_later_in_the_run_stops_it_before_the_first(tmp_path, capsys):
    folder = tmp_path / "nbs"
    parameters_notebook(folder / "00_a.ipynb", RUNNER_PARAMETERS)
    (folder / "01_b.ipynb").write_text("this is not a notebook")
    assert _reproduce(tmp_path, []) == 2
    assert re.search(r"01_b\.ipynb is not a readable notebook", capsys.readouterr().err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_a_smoke_run_writes_its_figures_beside_its_results_not_over_the_committed_ones(tmp_path):
    args = reproduce._parser().parse_args(["--profile", "smoke", "--run-dir", str(tmp_path / "runs")])
    assert reproduce._figures_dir(args) == tmp_path / "runs" / "figures"
    quick = reproduce._parser().parse_args(["--profile", "quick"])
    assert reproduce._figures_dir(quick).name == "figures" and reproduce._figures_dir(quick).parent.name != "runs"


@pytest.mark.parametrize("extra, message", [
    (["--connect-timeout", "5"], "--connect-timeout 5.0 applies to a scheduler at --address; there is none (give "),
    (["--address", "127.0.0.1:1", "--connect-timeout", "inf"], "--connect-timeout must be a finite number of seconds"),
    (["--address", "127.0.0.1:1", "--connect-timeout", "0"], "--connect-timeout must be a finite number of seconds"),
])
def test_the_grids_connect_timeout_is_checked(tmp_path, capsys, extra, message):
    assert grid_cli.main(["--profile", "smoke", "--attacks", "badnets", "--run-dir", str(tmp_path / "runs"),
                          "--cache-dir", str(tmp_path / "cache"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_the_grid_reads_a_cache_folder_it_may_not_write_when_told_so(tmp_path, capsys, monkeypatch):
    """A shared cache filled by someone else: --cache-read-only is enough, for the checks and the session alike."""
    cache = tmp_path / "cache"
    cache.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: (real_access(p, mode) and not (
        Path(p) == cache and mode & os.W_OK)))  # as for a user without write permission (tests may run as root)
    assert _grid(tmp_path, []) == 2  # not read-only: refused, naming the way out
    assert "set TSBD_CACHE_READ_ONLY=1 (or pass --cache-read-only)" in capsys.readouterr().err
    assert _grid(tmp_path, ["--cache-read-only"]) == 2  # read-only: every check passes; no cell may run
    err = capsys.readouterr().err
    assert "cells have not finished in the read-only cache" in err and "Traceback" not in err
