"""The reproduction grid (python -m tsbd_utils.grid): its plan, its checks, and smoke runs on two Dask workers that
must give the sequential run's tables, also when killed midway and restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tsbd_utils import grid
from tsbd_utils.attacks import ATTACKS
from tsbd_utils.exports import table1_file
from tsbd_utils.grid.__main__ import main
from tsbd_utils.grid.engine import cores
from tsbd_utils.zoo import BASELINES

# Trojan reads the clean model in prepare() (its cell waits for it), WaNet poisons on the fly; every baseline and
# notebook 07's extras are in, so every kind of cell runs.
ATTACKS_RUN = ["trojan", "wanet"]
ROOT = Path(__file__).resolve().parents[1]


def grid_args(tmp: Path, *extra: str) -> list[str]:
    return ["--profile", "smoke", "--attacks", *ATTACKS_RUN, "--cache-dir", str(tmp / "cache"),
            "--run-dir", str(tmp / "run"), *extra]


def tables_of(tmp: Path) -> dict[str, str]:
    out = tmp / "run" / "grid"
    return {name: table1_file(out, "csv", extra=name == "extras").read_text() for name in ("table1", "extras")}


def test_the_plan_puts_every_cell_after_the_cells_it_needs():
    cells = grid.plan()
    names = [c.name for c in cells]
    assert len(names) == len(set(names)) == 2 + len(ATTACKS) * (3 + len(BASELINES) + 8)
    for i, cell in enumerate(cells):
        assert set(cell.needs) <= set(names[:i]), cell
        grid.CELL_KINDS[cell.kind]  # every kind has a runner
    # Only the attacks that read the clean model wait for it; every defense waits for its attack.
    assert {c.attack for c in cells if c.kind == "attack" and "clean" in c.needs} == {"lf", "trojan"}
    assert all(f"attack/{c.attack}" in c.needs for c in cells if c.kind == "defense")
    assert all(c.needs == (f"unlearn/{c.attack}",) for c in cells if c.kind == "tsbd")


def test_the_plan_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown attack 'badnet'; allowed: badnets"):
        grid.plan(["badnet"])
    with pytest.raises(ValueError, match=r"unknown baseline\(s\) \['tsbd'\]; allowed: ft, fp"):
        grid.plan(["badnets"], ["tsbd"])
    with pytest.raises(ValueError, match="must not repeat"):
        grid.plan(["badnets", "badnets"])


@pytest.mark.parametrize("address", ["localhost", "host:0", "host:70000", "http://host:8786", "", "a b:1", ":8786"])
def test_bad_addresses_fail_at_once_naming_the_value(address):
    with pytest.raises(ValueError, match=f"scheduler address {address!r} is not understood; allowed: HOST:PORT"):
        grid.check_address(address)


def test_good_addresses_become_dask_addresses():
    assert grid.check_address("10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert grid.check_address("tls://node-1.cluster:9000") == "tls://node-1.cluster:9000"


@pytest.mark.parametrize("workers", [0, -1, True, 2.0])
def test_bad_worker_counts_fail_at_once(workers):
    with pytest.raises(ValueError, match=f"workers must be an int >= 1, got {workers!r}"):
        grid.local_plan(workers, None, "cpu")


def test_workers_never_oversubscribe_the_cores():
    n = cores()
    with pytest.raises(ValueError, match=f"this machine has {n} CPU core\\(s\\); allowed: 1-{n}"):
        grid.local_plan(n + 1, None, "cpu")
    with pytest.raises(ValueError, match="threads on"):
        grid.local_plan(1, n + 1, "cpu")
    plan = grid.local_plan(n, None, "cpu")
    assert plan.workers * plan.threads <= n and plan.gpus is None
    assert grid.local_plan(None, None, "cpu") == grid.LocalPlan(1, n)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "workers must be an int >= 1, got 0"),
        (["--address", "nowhere"], "scheduler address 'nowhere' is not understood"),
        (["--address", "h:1", "--workers", "2"], "a cluster brings its own workers"),
        (["--inline", "--workers", "2"], "--inline runs every cell in this process"),
        (["--attacks", "badnet"], "unknown attack 'badnet'"),
        (["--profile", "huge"], "unknown profile 'huge'"),
    ],
)
def test_the_command_line_refuses_bad_settings_before_anything_runs(tmp_path, capsys, args, message):
    common = ["--profile", "smoke", "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r")]
    assert main([*common, *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "grid" / "grid.json").exists()


def test_an_address_without_a_scheduler_fails_within_the_timeout(tmp_path, capsys):
    start = time.perf_counter()
    code = main(grid_args(tmp_path, "--address", "127.0.0.1:1", "--connect-timeout", "2"))
    assert code == 2 and time.perf_counter() - start < 30
    assert "no Dask scheduler answered at tcp://127.0.0.1:1 within 2 s" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Path:
    """The reference: every cell inline, one after another, one thread each (as each of two workers gets)."""
    tmp = tmp_path_factory.mktemp("sequential")
    assert main(grid_args(tmp, "--inline", "--threads", "1")) == 0
    return tmp


@pytest.mark.skipif(cores() < 2, reason="two workers need two cores")
def test_two_workers_give_the_sequential_tables(sequential, tmp_path, capsys):
    assert main(grid_args(tmp_path, "--workers", "2")) == 0
    assert tables_of(tmp_path) == tables_of(sequential)
    record = json.loads((tmp_path / "run" / "grid" / "grid.json").read_text())
    assert not record["failed"] and len(record["cells"]) == len(grid.plan(ATTACKS_RUN))
    assert {c["threads"] for c in record["cells"].values()} == {1}
    # A rerun finds every cell finished and only reads the tables back.
    assert main(grid_args(tmp_path, "--workers", "2")) == 0
    assert f"{len(grid.plan(ATTACKS_RUN))} finished before, 0 to run" in capsys.readouterr().out
    assert tables_of(tmp_path) == tables_of(sequential)


@pytest.mark.notebook
@pytest.mark.skipif(cores() < 2, reason="two workers need two cores")
def test_after_the_grid_notebooks_06_and_07_compute_nothing(tmp_path):
    """Every model and number notebooks 06 and 07 show comes from the grid's cells: no cache miss."""
    from tsbd_utils.reproduce import run_notebook

    assert main(grid_args(tmp_path, "--workers", "2")) == 0
    for name in ("06_baseline_defenses", "07_full_tables"):
        parameters = {"PROFILE": "smoke", "CACHE_DIR": str(tmp_path / "cache"), "FIGURES_DIR": str(tmp_path / "fig"),
                      "RUN_DIR": str(tmp_path / "nb"), "ATTACK_NAMES": ATTACKS_RUN}
        notebook = ROOT / "notebooks" / f"{name}.ipynb"
        run_notebook(notebook, tmp_path / "nb" / notebook.name, parameters)
        results = json.loads((tmp_path / "nb" / f"{name[:2]}_results.json").read_text())
        assert results["cache"]["misses"] == 0, (name, results["cache"])
    for extra in (False, True):  # one author: the grid's exports are notebook 07's, byte for byte
        grid_csv = table1_file(tmp_path / "run" / "grid", "csv", extra=extra)
        assert grid_csv.read_bytes() == table1_file(tmp_path / "fig", "csv", extra=extra).read_bytes()


@pytest.mark.skipif(cores() < 2, reason="two workers need two cores")
def test_a_grid_killed_midway_finishes_the_rest_when_restarted(sequential, tmp_path, capsys):
    total = len(grid.plan(ATTACKS_RUN))
    markers = tmp_path / "cache" / "grid-cell"
    command = [sys.executable, "-m", "tsbd_utils.grid", *grid_args(tmp_path, "--workers", "2")]
    # Its own process group, as a terminal's Ctrl-C or a batch system's kill reaches the workers too.
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(list(markers.glob("*.safetensors"))) < 8 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    done = len(list(markers.glob("*.safetensors")))
    assert 8 <= done < total, f"the run was killed after {done} of {total} cells; the test needs a run cut midway"
    assert main(grid_args(tmp_path, "--workers", "2")) == 0
    out = capsys.readouterr().out
    before = int(out.split(" finished before")[0].rsplit(" ", 1)[1])
    assert before >= done and f"{total - before} to run" in out
    assert tables_of(tmp_path) == tables_of(sequential)


def test_concurrent_writers_and_readers_of_one_entry_are_safe(tmp_path):
    """Four processes store the same entry 50 times each while a fifth reads it until they are done: every read
    after the first write returns the whole value, no read finds a damaged file, no temporary file is left."""
    cache, stop = tmp_path / "cache", tmp_path / "writers-done"
    code = f"""
import os, sys, time, warnings, torch
from tsbd_utils.cache import Cache
warnings.simplefilter("error")  # a damaged entry is reported as a warning: make it fatal here
cache = Cache.at({str(cache)!r})
value = {{"w": torch.arange(200_000, dtype=torch.float32), "note": "same"}}
if sys.argv[1] == "write":
    for _ in range(50):
        cache.store("model", {{"k": 1}}, value)
else:
    seen, deadline = 0, time.monotonic() + 240
    while not os.path.exists({str(stop)!r}) and time.monotonic() < deadline:
        loaded = cache.load("model", {{"k": 1}})
        if loaded is not None:
            assert torch.equal(loaded[0]["w"], value["w"]) and loaded[0]["note"] == "same"
            seen += 1
        elif seen:
            raise SystemExit("the entry vanished after it had been read")
    print(seen)
"""
    reader = subprocess.Popen([sys.executable, "-c", code, "read"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    writers = [subprocess.Popen([sys.executable, "-c", code, "write"]) for _ in range(4)]
    assert all(p.wait(timeout=300) == 0 for p in writers)
    stop.touch()
    out, err = reader.communicate(timeout=300)
    assert reader.returncode == 0, err
    assert int(out) > 0  # it did read the entry while the writers replaced it
    assert len(list((cache / "model").iterdir())) == 1  # the entry alone: no temporary file left


def test_a_failing_cell_fails_only_the_cells_that_need_it(tmp_path):
    """A cell that raises is reported with its error; a cell that needs it is reported as not run; the others run."""
    bad = grid.Cell("attack", "no-such-attack")
    cells = [bad, grid.Cell("unlearn", "no-such-attack", needs=(bad.name,)), grid.Cell("clean")]
    settings = grid.Settings("smoke", cache_dir=str(tmp_path), threads=1)
    for outcome in (grid.run_inline(cells, settings, report=lambda _: None),
                    grid.run_dask(cells, settings, plan=grid.local_plan(1, 1, "cpu"), report=lambda _: None)):
        assert list(outcome.done) == ["clean"]
        assert "unknown attack 'no-such-attack'" in outcome.failed["attack/no-such-attack"]
        assert outcome.failed["unlearn/no-such-attack"] == "not run: it needs attack/no-such-attack, which failed"


def test_a_worker_that_sees_another_folder_under_the_cache_path_is_named(tmp_path):
    from tsbd_utils.grid.engine import _probe_problem

    probe = tmp_path / ".grid-probe-x"
    assert "no folder" in _probe_problem(str(tmp_path / "absent" / probe.name), "x")
    assert "another folder than the grid's" in _probe_problem(str(probe), "x")  # the grid's file is not there
    probe.write_text("x")
    assert _probe_problem(str(probe), "x") is None
