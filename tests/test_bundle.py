"""Bundles of the cache: export the entries notebooks used, import them checked, refuse a bad bundle whole."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from tsbd_utils import bundle
from tsbd_utils.cache import Cache, entry_version_problem


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def made(tmp_path):
    """A cache with three entries, two of them used by the recorded runs of notebooks 00 and 01, and a bundle."""
    cache = Cache(tmp_path / "cache")
    for i in range(3):
        cache.get_or_compute("model", {"i": i}, lambda i=i: {"w": torch.full((64, 64), float(i)), "acc": 0.5 + i})
    used_by = [f"{e.kind}/{e.key}" for e in cache.events]  # as a run records them
    names = [f"{n}.safetensors" for n in used_by]  # as the cache and the bundle name them
    runs = tmp_path / "runs"
    runs.mkdir()
    for number, used in (("00", used_by[:1]), ("01", used_by[:2])):
        record = {"provenance": {"profile": "smoke", "seed": 0, "dataset": "fashion_mnist", "git_commit": "abc",
                                 "versions": {"torch": "2.14.1"}},
                  "cache": {"hits": 0, "misses": len(used), "entries": used}}
        (runs / f"{number}_results.json").write_text(json.dumps(record))
    out = tmp_path / "b.zip"
    manifest = bundle.export(cache.root, runs, out, profile="smoke")
    return cache, names, runs, out, manifest


def test_export_holds_the_entries_the_runs_used_with_a_manifest(made):
    cache, names, _, out, manifest = made
    assert manifest["notebooks"] == ["00", "01"] and manifest["profile"] == "smoke" and manifest["seed"] == 0
    assert [e["name"] for e in manifest["entries"]] == sorted(names[:2])  # the third, unused, stays out
    assert {e["name"]: e["notebooks"] for e in manifest["entries"]}[names[0]] == ["00", "01"]
    assert manifest["versions"]["tsbd_utils"] and manifest["versions"]["torch"] and len(manifest["settings"]) > 50
    assert manifest["dataset"] == "fashion_mnist" and manifest["runs"]["01"]["git_commit"] == "abc"
    assert manifest["runs"]["00"]["versions"] == {"torch": "2.14.1"}
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == [bundle.MANIFEST, *sorted(names[:2])]
        assert all(archive.read(n) == (cache.root / n).read_bytes() for n in names[:2])


def test_import_into_an_empty_cache_serves_every_entry_and_twice_is_a_no_op(made, tmp_path):
    _, names, _, out, _ = made
    fresh = Cache(tmp_path / "fresh")
    report = bundle.import_bundle(out, fresh.root, profile="smoke")
    assert sorted(report.placed) == sorted(names[:2]) and not report.stale and not report.changed_settings
    for i in range(2):
        value = fresh.get_or_compute("model", {"i": i}, lambda: pytest.fail("a miss after the import"))
        assert value["acc"] == 0.5 + i and torch.equal(value["w"], torch.full((64, 64), float(i)))
    before = _files(fresh.root)
    again = bundle.import_bundle(out, fresh.root)
    assert again.placed == [] and sorted(again.present) == sorted(names[:2]) and _files(fresh.root) == before
    assert not [p for p in fresh.root.iterdir() if p.name.startswith(".")]  # no staging folder left


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy the bundle ``src`` to ``dst``, passing (name, bytes) of every member through ``edit``."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as new:
        for name in old.namelist():
            for new_name, data in edit(name, old.read(name)):
                new.writestr(new_name, data)


def _flip_in_entry(name, data):
    if name != bundle.MANIFEST:
        data = bytearray(data)
        data[len(data) // 2] ^= 0x01
    yield name, bytes(data)


def _truncate_entry(name, data):
    yield name, data[: len(data) // 2] if name != bundle.MANIFEST else data


def _edit_key(name, data):
    """An entry renamed to another key, in the archive and in the manifest, sizes and checksums kept true."""
    other = "0" * 32
    if name == bundle.MANIFEST:
        manifest = json.loads(data)
        first = manifest["entries"][0]
        first["name"], first["key"] = f"model/{other}.safetensors", other
        yield name, json.dumps(manifest).encode()
    elif name == json.loads(_edit_key.manifest)["entries"][0]["name"]:
        yield f"model/{other}.safetensors", data
    else:
        yield name, data


def _shrink_size(name, data):
    """The manifest promises a tiny entry: the import must not unpack more than it promised."""
    if name == bundle.MANIFEST:
        manifest = json.loads(data)
        manifest["entries"][0]["size"] = 10
        data = json.dumps(manifest).encode()
    yield name, data


def _foreign(name, data):
    yield f"photos/{Path(name).name}", data


@pytest.mark.parametrize("damage, message", [
    ("flip", r"entry model/[0-9a-f]{32}\.safetensors (is damaged|does not match its manifest)"),
    ("truncate", r"entry model/[0-9a-f]{32}\.safetensors does not match its manifest"),
    ("key", r"entry model/0{32}\.safetensors fails the cache's checks .*stored key does not match the file name"),
    ("flip-stored", r"entry model/[0-9a-f]{32}\.safetensors is damaged \(BadZipFile: Bad CRC-32"),
    ("size", r"entry model/[0-9a-f]{32}\.safetensors does not match its manifest \(size \d+ for 10,"),
    ("foreign", r"is a zip file but not a bundle of this course \(it has no manifest\.json\)"),
    ("not-zip", r"is not a bundle: not a zip file"),
    ("empty", r"is an empty file"),
])
def test_a_bad_bundle_is_refused_naming_what_is_wrong_and_nothing_is_written(made, tmp_path, damage, message):
    _, _, _, out, _ = made
    bad = tmp_path / "bad.zip"
    if damage == "flip":
        _rewrite(out, bad, _flip_in_entry)
    elif damage == "truncate":
        _rewrite(out, bad, _truncate_entry)
    elif damage == "key":
        with zipfile.ZipFile(out) as archive:
            _edit_key.manifest = archive.read(bundle.MANIFEST)
        _rewrite(out, bad, _edit_key)
    elif damage == "flip-stored":  # one byte flipped inside the file on disk (a stored member: the CRC catches it)
        with zipfile.ZipFile(out) as old, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as new:
            for name in old.namelist():
                new.writestr(name, old.read(name))
        raw = bytearray(bad.read_bytes())
        with zipfile.ZipFile(bad) as archive:
            info = archive.getinfo(archive.namelist()[1])
        raw[info.header_offset + 200] ^= 0x01
        bad.write_bytes(bytes(raw))
    elif damage == "size":
        _rewrite(out, bad, _shrink_size)
    elif damage == "foreign":
        _rewrite(out, bad, _foreign)
    elif damage == "not-zip":
        bad.write_bytes(b"GIF89a" + bytes(100))
    else:
        bad.write_bytes(b"")
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("a learner's file")
    before = _files(target)
    with pytest.raises(bundle.BundleError, match=message):
        bundle.import_bundle(bad, target)
    assert _files(target) == before and sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    with pytest.raises(bundle.BundleError):  # a cache folder that did not exist is not left behind either
        bundle.import_bundle(bad, tmp_path / "new-cache")
    assert not (tmp_path / "new-cache").exists()


def test_a_bundle_of_another_profile_or_cache_version_is_named(made, tmp_path, monkeypatch):
    _, names, _, out, _ = made
    with pytest.raises(bundle.BundleError, match=r"a bundle of profile 'smoke', not 'quick'"):
        bundle.import_bundle(out, tmp_path / "c1", profile="quick")
    # a checkout whose cache version is another: it would compute other keys from the same fields
    monkeypatch.setattr(bundle, "entry_version_problem", lambda meta: entry_version_problem(meta, "9.9.9"))
    report = bundle.import_bundle(out, tmp_path / "c2")
    assert report.placed == [] and sorted(report.stale) == sorted(names[:2])
    assert "another version made it" in report.summary()


def test_export_refuses_a_run_it_cannot_serve(made, tmp_path):
    cache, names, runs, _, _ = made
    with pytest.raises(bundle.BundleError, match=r"notebook 05 has no run in .*--only 05"):
        bundle.export(cache.root, runs, tmp_path / "x.zip", profile="smoke", notebooks=["05"])
    with pytest.raises(bundle.BundleError, match=r"was made with \{'profile': 'smoke', 'seed': 0\}, not "):
        bundle.export(cache.root, runs, tmp_path / "x.zip", profile="smoke", seed=1)
    (cache.root / names[0]).unlink()
    with pytest.raises(bundle.BundleError, match=rf"cache entry {names[0]} \(used by notebook\(s\) 00, 01\) cannot"):
        bundle.export(cache.root, runs, tmp_path / "x.zip", profile="smoke")
    assert not (tmp_path / "x.zip").exists()


def test_the_command_line_exports_and_imports(made, tmp_path, capsys):
    cache, _, runs, _, _ = made
    out = tmp_path / "cli.zip"
    assert bundle.main(["export", "--profile", "smoke", "--cache-dir", str(cache.root), "--run-dir", str(runs),
                        "--out", str(out)]) == 0
    assert "2 entries of notebooks 00, 01" in capsys.readouterr().out
    assert bundle.main(["import", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "placed 2 entries, 0 already in the cache, 0 not imported" in capsys.readouterr().out
    assert bundle.main(["export", "--profile", "smoke", "--only", "5", "--cache-dir", str(cache.root)]) == 2
    assert "--only takes two-digit notebook numbers such as 05, got '5'" in capsys.readouterr().err
    assert bundle.main(["import", str(tmp_path / "missing.zip"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "missing.zip is not a file" in capsys.readouterr().err
