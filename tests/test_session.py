import json

import pytest
import torch

from tsbd_utils import device, session
from tsbd_utils.cache import CacheEvent


def test_resolve_device():
    assert session.resolve_device("cpu") == torch.device("cpu")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"  # auto: CUDA, then MPS, then CPU
    assert session.resolve_device("auto").type == expected
    assert session.resolve_device is device.resolve_device  # the session re-exports the device module's
    with pytest.raises(ValueError, match="unknown device 'tpu'; allowed: auto, cpu, cuda, cuda:N, mps"):
        session.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            session.resolve_device("cuda")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"profile": "fast"}, "unknown profile 'fast'; allowed: smoke, quick, paper"),
        (
            {"profile": "smoke", "dataset": "imagenet"},
            "unknown dataset 'imagenet'; allowed: fashion_mnist, cifar10, gtsrb",
        ),
        ({"profile": "smoke", "seed": -1}, r"SEED must be an int in 0\.\.4294967295, got -1"),
        ({"profile": "smoke", "seed": 2**64}, r"SEED must be an int in 0\.\.4294967295, got 18446744073709551616"),
        ({"profile": "smoke", "seed": 1.0}, r"SEED must be an int in 0\.\.4294967295, got 1\.0"),
        ({"profile": "smoke", "cache_dir": 0}, r"CACHE_DIR must be a folder path \(a non-empty string\) or None, "
                                                r"got 0"),
        ({"profile": "smoke", "cache_dir": ""}, r"CACHE_DIR must be a folder path .* or None, got ''"),
        ({"profile": "smoke", "data_dir": ""}, r"DATA_DIR must be a folder path .* or None, got ''"),
        ({"profile": "smoke", "figures_dir": 7}, r"FIGURES_DIR must be a folder path \(a non-empty string\), got 7"),
        ({"profile": "smoke", "figures_dir": ["a"]}, r"FIGURES_DIR must be a folder path .* got \['a'\]"),
        ({"profile": "smoke", "figures_dir": None}, r"FIGURES_DIR must be a folder path \(a non-empty string\), "
                                                     r"got None"),
        ({"profile": "smoke", "run_dir": {"a": 1}}, r"RUN_DIR must be a folder path .* got \{'a': 1\}"),
        ({"profile": "smoke", "cache_dir": "{tmp}/loop"}, r"CACHE_DIR .*loop cannot be used: .*symbolic link that "
                                                           r"leads nowhere"),
        ({"profile": "smoke", "device": "gpu"}, "unknown device 'gpu'"),
        ({"profile": "smoke", "cache_dir": "{tmp}/a-file/c"}, r"CACHE_DIR .*a-file/c cannot be used: .*a-file, on "),
        ({"profile": "smoke", "figures_dir": "{tmp}/a-file"}, r"FIGURES_DIR .*a-file cannot be used: .*is a file"),
        ({"profile": "smoke", "run_dir": "{tmp}/a-file/r"}, r"RUN_DIR .*a-file/r cannot be used"),
    ],
)
def test_start_rejects_bad_parameters_before_doing_anything(tmp_path, kwargs, message):
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    folders = {"cache_dir": str(tmp_path / "c"), "figures_dir": str(tmp_path / "f"), "run_dir": str(tmp_path / "r")}
    folders.update({k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items() if k in folders})
    with pytest.raises(ValueError, match=message):
        session.start("00", **{**{k: v for k, v in kwargs.items() if k not in folders}, **folders})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "loop"]


def test_start_refuses_a_missing_read_only_cache_and_accepts_an_existing_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TSBD_CACHE_READ_ONLY", "1")
    folders = {"figures_dir": str(tmp_path / "f"), "run_dir": str(tmp_path / "r")}
    with pytest.raises(ValueError, match=r"CACHE_DIR .*shared cannot be used: .* not an existing folder"):
        session.start("00", profile="smoke", cache_dir=str(tmp_path / "shared"), **folders)
    (tmp_path / "shared").mkdir()
    s = session.start("00", profile="smoke", cache_dir=str(tmp_path / "shared"), **folders)
    assert s.cache.read_only and s.cache.root == tmp_path / "shared"


@pytest.mark.parametrize("name, message", [("missing", "does not exist"), ("a-file", "is a file, not a folder")])
def test_start_refuses_a_data_folder_that_is_missing_or_a_file_before_writing(tmp_path, name, message):
    (tmp_path / "a-file").write_text("not a folder")
    folders = {k: str(tmp_path / k) for k in ("cache_dir", "figures_dir", "run_dir")}
    with pytest.raises(FileNotFoundError, match=rf"the data folder .*{name} \(from DATA_DIR / --data-dir\) {message}"):
        session.start("00", profile="smoke", data_dir=str(tmp_path / name), **folders)
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]  # no cache, figures or run folder made


def test_results_carry_provenance(tmp_path):
    s = session.start(
        "03",
        profile="smoke",
        cache_dir=str(tmp_path / "c"),
        figures_dir=str(tmp_path / "f"),
        run_dir=str(tmp_path / "r"),
    )
    assert s.threads >= 1 and torch.get_num_threads() == s.threads
    path = s.write_results({"acc": 0.5})
    value = json.loads(path.read_text())
    assert path.name == "03_results.json" and value["results"] == {"acc": 0.5} and value["meaningful"] is False
    prov = value["provenance"]
    assert (prov["profile"], prov["dataset"], prov["seed"], prov["device"]) == (
        "smoke",
        "fashion_mnist",
        0,
        s.device.type,
    )
    assert prov["versions"]["torch"] == torch.__version__ and "git_commit" in prov
    assert prov["profile_settings"]["train.epochs"] == 1


def test_importing_the_session_or_the_device_module_loads_no_plotting():
    """Benchmarks and scripts import these; seaborn and the package's plotting load only where a notebook plots."""
    import subprocess
    import sys

    code = ("import sys, tsbd_utils.device, tsbd_utils.session; "
            "print(sorted(m for m in ('seaborn', 'tsbd_utils.plotting') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]", run.stdout


def test_seconds_by_kind_counts_each_lookup_once_by_kind_and_role():
    events = [CacheEvent("model", "a", False, 5.0, 5.0, "clean"), CacheEvent("model", "b", True, 0.1, 0.1, "clean"),
              CacheEvent("evaluation", "c", False, 7.0, 2.0, "backdoor"), CacheEvent("trigger", "d", False, 1.0, 1.0)]
    assert session.seconds_by_kind(events) == {
        "evaluation backdoor": {"computed": 1, "compute_seconds": 2.0, "read": 0, "read_seconds": 0.0},
        "model clean": {"computed": 1, "compute_seconds": 5.0, "read": 1, "read_seconds": 0.1},
        "trigger": {"computed": 1, "compute_seconds": 1.0, "read": 0, "read_seconds": 0.0},
    }
