import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tsbd_utils import atomic, cache as cache_mod, models, paths
from tsbd_utils.cache import Cache


class Counter:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return dict(self.value)


def make_value():
    return {
        "weights": torch.arange(12, dtype=torch.float32).view(3, 4),
        "mask": torch.tensor([True, False]),
        "acc": 0.875,
        "history": [{"epoch": 1, "loss": 0.5}],
        "name": "badnets",
    }


def test_miss_then_hit_returns_the_same_value(tmp_path):
    cache = Cache(tmp_path)
    compute = Counter(make_value())
    first = cache.get_or_compute("model", {"attack": "badnets", "seed": 0}, compute)
    second = cache.get_or_compute("model", {"seed": 0, "attack": "badnets"}, compute)  # key order is irrelevant
    assert compute.calls == 1 and [e.hit for e in cache.events] == [False, True]
    assert torch.equal(second["weights"], first["weights"]) and second["mask"].dtype == torch.bool
    assert second["acc"] == 0.875 and second["history"] == [{"epoch": 1, "loss": 0.5}] and second["name"] == "badnets"
    assert cache.info("model", {"attack": "badnets", "seed": 0})["compute_seconds"] >= 0


def test_nested_lookups_are_counted_once_in_exclusive_seconds(tmp_path):
    """An evaluation that needs a model computes it inside its own computation: the model's seconds are the
    model's, the evaluation's exclusive seconds are what it did itself, and a read inside counts as a read."""
    cache = Cache(tmp_path)
    cache.get_or_compute("model", {"role": "clean", "i": 0}, lambda: {"w": torch.zeros(2)})  # stored beforehand

    def model():
        time.sleep(0.2)
        return {"w": torch.ones(2)}

    def evaluation():
        cache.get_or_compute("model", {"role": "backdoor"}, model)
        cache.get_or_compute("model", {"role": "clean", "i": 0}, lambda: pytest.fail("stored, must be read"))
        time.sleep(0.1)
        return {"acc": 0.5}

    cache.get_or_compute("evaluation", {"model": {"role": "backdoor"}}, evaluation)
    _, inner, read, outer = cache.events
    assert (inner.role, read.role, outer.role) == ("backdoor", "clean", "backdoor") and read.hit
    assert 0.2 <= inner.exclusive < 0.3 and outer.seconds >= 0.3
    assert 0.1 <= outer.exclusive < 0.2  # the nested model and read are not counted again
    assert abs(outer.seconds - outer.exclusive - inner.exclusive - read.exclusive) < 0.02


@dataclass(frozen=True)
class Recipe:
    epochs: int
    lr: float


def test_key_depends_on_every_field_the_kind_and_the_version(tmp_path):
    cache = Cache(tmp_path)
    base = cache.key("model", {"recipe": Recipe(5, 0.1), "seed": 0})
    assert base == cache.key("model", {"recipe": Recipe(5, 0.1), "seed": 0})
    assert base != cache.key("model", {"recipe": Recipe(6, 0.1), "seed": 0})
    assert base != cache.key("model", {"recipe": Recipe(5, 0.1), "seed": 1})
    assert base != cache.key("result", {"recipe": Recipe(5, 0.1), "seed": 0})
    assert base != Cache(tmp_path, version="9.9").key("model", {"recipe": Recipe(5, 0.1), "seed": 0})
    with pytest.raises(TypeError, match="not JSON-able"):
        cache.key("model", {"weights": torch.zeros(1)})
    with pytest.raises(ValueError, match="cache kind 'Model!'"):
        cache.key("Model!", {})


def test_truncated_file_is_detected_and_recomputed(tmp_path):
    cache = Cache(tmp_path)
    compute = Counter(make_value())
    cache.get_or_compute("model", {"k": 1}, compute)
    path = cache.path("model", {"k": 1})
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.warns(UserWarning, match="unreadable"):
        value = cache.get_or_compute("model", {"k": 1}, compute)
    assert compute.calls == 2 and torch.equal(value["weights"], make_value()["weights"])
    assert cache.load("model", {"k": 1}) is not None  # repaired on disk


def test_a_readable_entry_that_its_check_calls_stale_is_removed_and_recomputed(tmp_path):
    cache = Cache(tmp_path)
    stale = {"weights": torch.full((2,), float("nan")), "note": "old"}
    cache.get_or_compute("model", {"k": 1}, lambda: stale)

    def check(value):
        return "non-finite weights" if not value["weights"].isfinite().all() else None

    compute = Counter(make_value())
    with pytest.warns(UserWarning, match="stale: non-finite weights"):
        value = cache.get_or_compute("model", {"k": 1}, compute, check=check)
    assert compute.calls == 1 and torch.equal(value["weights"], make_value()["weights"])
    assert cache.get_or_compute("model", {"k": 1}, compute, check=check)["weights"].isfinite().all()
    assert compute.calls == 1  # the recomputed entry passes its check: read, not recomputed again


def test_flipped_bytes_fail_the_checksum(tmp_path):
    cache = Cache(tmp_path)
    compute = Counter(make_value())
    cache.get_or_compute("model", {"k": 1}, compute)
    path = cache.path("model", {"k": 1})
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # inside the tensor data, header still valid
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="checksum"):
        cache.get_or_compute("model", {"k": 1}, compute)
    assert compute.calls == 2


def test_a_file_stored_under_another_key_is_not_loaded(tmp_path):
    cache = Cache(tmp_path)
    cache.get_or_compute("model", {"k": 1}, Counter(make_value()))
    other = Counter({"acc": 0.1})
    cache.path("model", {"k": 2}).write_bytes(cache.path("model", {"k": 1}).read_bytes())
    with pytest.warns(UserWarning, match="does not match the file name"):
        value = cache.get_or_compute("model", {"k": 2}, other)
    assert other.calls == 1 and value == {"acc": 0.1}


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    cache = Cache(tmp_path)

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        cache.store("model", {"k": 1}, make_value())
    assert list((tmp_path / "model").iterdir()) == []


def test_a_killed_writers_old_temporary_file_goes_at_the_next_write_a_young_one_stays(tmp_path):
    cache = Cache(tmp_path)
    entry = cache.path("model", {"k": 1})
    entry.parent.mkdir(parents=True)
    old, young = entry.parent / f".{entry.name}.killed.tmp", entry.parent / f".{entry.name}.writing.tmp"
    for leftover in (old, young):
        leftover.write_bytes(b"half an entry")
    day_ago = time.time() - atomic.STALE_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    cache.store("model", {"k": 1}, make_value())
    assert not old.exists() and young.exists()  # a younger one may belong to a writer at work right now
    assert cache.load("model", {"k": 1}) is not None


def test_entries_are_safetensors_with_a_json_header_no_pickle(tmp_path):
    cache = Cache(tmp_path)
    cache.get_or_compute("result", {"k": 1}, Counter({"asr": 0.5}))
    raw = cache.path("result", {"k": 1}).read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    assert json.loads(header["__metadata__"]["tsbd.json"]) == {"asr": 0.5}
    assert b"\x80\x04" not in raw[:2]  # not a pickle stream


def test_get_or_train_restores_weights_and_extras(tmp_path):
    cache = Cache(tmp_path)
    kwargs = dict(num_classes=3, in_channels=1, width=2, mean=(0.5,), std=(0.5,))
    trained = models.build_model("preactresnet18", seed=0, **kwargs)
    calls = []

    def fit(model):
        calls.append(1)
        with torch.no_grad():
            model.linear.bias.fill_(7.0)
        return {"note": "trained"}

    m1, extras1, info1 = cache.get_or_train("model", {"k": 1}, trained, fit, info=lambda: {"device": "cpu"})
    fresh = models.build_model("preactresnet18", seed=5, **kwargs)
    m2, extras2, info2 = cache.get_or_train("model", {"k": 1}, fresh, fit)
    assert calls == [1] and extras2 == extras1 == {"note": "trained"}
    assert info2 == info1 and info2["device"] == "cpu" and info2["compute_seconds"] >= 0
    assert torch.equal(m2.linear.bias, torch.full((3,), 7.0)) and torch.equal(m2.conv1.weight, m1.conv1.weight)
    assert not m2.training


def test_get_or_train_refuses_a_fit_without_extras_and_an_entry_of_another_architecture(tmp_path):
    cache = Cache(tmp_path)
    kwargs = dict(num_classes=3, in_channels=1, mean=(0.5,), std=(0.5,))
    narrow = models.build_model("preactresnet18", seed=0, width=2, **kwargs)
    with pytest.raises(TypeError, match="fit must return a dict of JSON-able extras, got NoneType; nothing stored"):
        cache.get_or_train("model", {"k": 1}, narrow, lambda m: None)
    assert list(tmp_path.rglob("*.safetensors")) == []
    cache.get_or_train("model", {"k": 1}, narrow, lambda m: {})
    wide = models.build_model("preactresnet18", seed=0, width=4, **kwargs)  # the key's fields leave out the width
    message = r"the cached model entry \S+ holds weights of another architecture .*first conv1.weight: stored \[2, 1"
    with pytest.raises(RuntimeError, match=message):
        cache.get_or_train("model", {"k": 1}, wide, lambda m: {})


def test_location_explicit_then_environment_then_project(tmp_path, monkeypatch):
    monkeypatch.setenv("TSBD_CACHE_DIR", str(tmp_path / "env"))
    assert Cache.at(tmp_path / "explicit").root == tmp_path / "explicit"
    assert Cache.at(None).root == tmp_path / "env"
    monkeypatch.delenv("TSBD_CACHE_DIR")
    assert Cache.at(None).root == paths.project_root() / ".cache"


def _edit_metadata(path: Path, key: str, value: str) -> None:
    """Rewrite one metadata field of a safetensors file in place, as a hand edit would (valid file, new text)."""
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
    meta[key] = value
    save_file(load_file(str(path)), str(path), metadata=meta)


@pytest.mark.parametrize("field, value", [
    ("tsbd.info", json.dumps({"compute_seconds": 0.001, "device": "cuda"})),  # provenance made up
    ("tsbd.fields", json.dumps({"k": 2})),  # the fields it claims to answer
])
def test_an_edited_entry_is_detected_not_reported(tmp_path, field, value):
    cache = Cache(tmp_path)
    compute = Counter(make_value())
    cache.get_or_compute("model", {"k": 1}, compute)
    _edit_metadata(cache.path("model", {"k": 1}), field, value)
    with pytest.warns(UserWarning, match="do not match the seal"):
        _, info = cache.get_or_compute_with_info("model", {"k": 1}, compute)
    assert compute.calls == 2 and info.get("device") != "cuda"


@pytest.mark.parametrize("edit", ["unsealed", "unsealed, provenance edited", "unsealed, fields edited"])
def test_an_entry_without_its_seal_is_recomputed_never_trusted(tmp_path, edit):
    cache = Cache(tmp_path)
    compute = Counter(make_value())
    _, first = cache.get_or_compute_with_info("model", {"k": 1}, compute)
    path = cache.path("model", {"k": 1})
    with safe_open(str(path), framework="pt") as handle:
        meta = {k: v for k, v in handle.metadata().items() if k != "tsbd.seal"}
    if "provenance" in edit:
        meta["tsbd.info"] = json.dumps({**first, "train_seconds": 0.5})
    if "fields" in edit:
        meta["tsbd.fields"] = json.dumps({"k": 2})
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.warns(UserWarning, match="carries no seal"):
        _, info = cache.get_or_compute_with_info("model", {"k": 1}, compute)
    assert compute.calls == 2 and "train_seconds" not in info  # recomputed, and the made-up provenance is gone
    assert cache.get_or_compute("model", {"k": 1}, compute) and compute.calls == 2  # the new entry is sealed: a hit


def test_an_entry_whose_stored_fields_differ_from_its_key_is_recomputed(tmp_path):
    cache = Cache(tmp_path)
    compute = Counter(make_value())
    cache.get_or_compute("model", {"k": 1}, compute)
    path = cache.path("model", {"k": 1})
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
    meta["tsbd.fields"] = json.dumps({"k": 2})
    meta["tsbd.seal"] = cache_mod._seal(meta)  # sealed again over the edit: only the fields check can tell
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.warns(UserWarning, match="the fields it stores are not the fields asked for"):
        cache.get_or_compute("model", {"k": 1}, compute)
    assert compute.calls == 2


def test_a_full_disk_while_safetensors_writes_warns_and_keeps_the_value(tmp_path, monkeypatch):
    cache = Cache(tmp_path)

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("No space left on device (os error 28)")  # what safetensors raises: not an OSError

    monkeypatch.setattr(cache_mod, "save_file", full)
    with pytest.warns(UserWarning, match="could not store model .*SafetensorError: No space left on device"):
        value = cache.get_or_compute("model", {"k": 1}, Counter(make_value()))
    assert value["acc"] == 0.875 and list((tmp_path / "model").iterdir()) == []


def test_a_read_only_cache_recomputes_a_damaged_entry_warns_and_writes_nothing(tmp_path):
    Cache(tmp_path).get_or_compute("model", {"k": 1}, Counter(make_value()))
    path = Cache(tmp_path).path("model", {"k": 1})
    damaged = path.read_bytes()[:-7]
    path.write_bytes(damaged)
    cache = Cache(tmp_path, read_only=True)
    compute = Counter(make_value())
    with pytest.warns(UserWarning) as caught:
        value = cache.get_or_compute("model", {"k": 1}, compute)
        cache.get_or_compute("model", {"k": 2}, compute)  # missing: computed, not stored
    assert compute.calls == 2 and value["acc"] == 0.875
    messages = " ".join(str(w.message) for w in caught)
    assert "left in place (read-only cache)" in messages and "computed and not stored" in messages
    assert path.read_bytes() == damaged and not cache.path("model", {"k": 2}).exists()


def test_a_failed_write_warns_and_still_returns_the_value(tmp_path, monkeypatch):
    cache = Cache(tmp_path)

    def broken(tensors, filename, metadata=None):
        raise OSError("read-only file system")

    monkeypatch.setattr(cache_mod, "save_file", broken)
    with pytest.warns(UserWarning, match="could not store model .*read-only file system"):
        value = cache.get_or_compute("model", {"k": 1}, Counter(make_value()))
    assert value["acc"] == 0.875


@pytest.mark.parametrize("setting, expected", [("", False), ("0", False), ("no", False), ("1", True), ("TRUE", True)])
def test_read_only_comes_from_the_environment(monkeypatch, tmp_path, setting, expected):
    monkeypatch.setenv("TSBD_CACHE_READ_ONLY", setting)
    assert Cache.at(tmp_path).read_only is expected
    assert Cache.at(tmp_path, read_only=not expected).read_only is (not expected)
