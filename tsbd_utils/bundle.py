"""Bundles of the cache: one person computes the models once, a class imports them and starts in seconds.

A bundle is one zip file (Python's ``zipfile`` reads it, so does every operating system): ``manifest.json``
first, then one member per cache entry, ``<kind>/<key>.safetensors``, exactly as the cache stores it. The manifest
names the profile, seed and dataset, the notebooks whose runs chose the entries, the commit and package versions
they were computed with, the profile's resolved settings (``config show``) and, for every entry, its kind, key, size
and SHA-256.

Which entries: the ones the named notebooks looked up in their last run (``runs/<profile>/NN_results.json``
records them), so a learner's run of those notebooks finds every entry it asks for.

Import checks everything before it places anything: the manifest, that the members are exactly the entries it lists,
each entry's size and SHA-256, and each entry's own checks (stored kind and key, checksum, seal, and that its key is
the one this package computes from its fields). A bad bundle is refused with the entry named and nothing written;
entries are then moved into the cache one by one with an atomic rename. An entry made by another cache version is
not imported and is reported; settings of the profile that changed since the bundle's commit are reported (entries
computed under the old settings are never read: a key covers every setting that made its entry). An entry already
in the cache is left as it is, so importing twice is a no-op.

Example:
    >>> export(cache_root, Path("runs/quick"), Path("tsbd-quick-seed0.zip"), profile="quick")   # the instructor
    >>> import_bundle(Path("tsbd-quick-seed0.zip"), cache_root)                                 # each learner
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import atomic_path
from .cache import ENTRY_NAME, entry_version_problem, read_entry

FORMAT = "tsbd-cache-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
COMPRESSION = zipfile.ZIP_DEFLATED
COMPRESS_LEVEL = 1  # float weights barely compress: level 1 is within half a percent of level 6 and faster
_CHUNK = 1 << 20


class BundleError(ValueError):
    """A bundle that cannot be made or imported; the message names the file or entry and what to do."""


@dataclass
class ImportReport:
    placed: list[str] = field(default_factory=list)  # entries moved into the cache
    present: list[str] = field(default_factory=list)  # entries the cache already held (left as they were)
    stale: dict[str, str] = field(default_factory=dict)  # entries not imported, and why
    changed_settings: list[str] = field(default_factory=list)  # the profile's settings that differ from the bundle's
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.manifest
        lines = [f"bundle of profile {m.get('profile')}, seed {m.get('seed')}, dataset {m.get('dataset')}, notebooks "
                 f"{', '.join(m.get('notebooks', []))}; exported at commit {m.get('commit')}",
                 f"placed {len(self.placed)} entries, {len(self.present)} already in the cache, "
                 f"{len(self.stale)} not imported"]
        lines += [f"  not imported: {name}: {why}" for name, why in sorted(self.stale.items())]
        if self.changed_settings:
            lines.append(f"{len(self.changed_settings)} setting(s) of the profile differ from the bundle's; entries "
                         "computed under the old values are never read (their notebooks will compute them):")
            lines += [f"  {line}" for line in self.changed_settings]
        return "\n".join(lines)


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            sha.update(block)
    return sha.hexdigest()


def _settings_rows(profile: str, dataset: str | None) -> list[str]:
    from .settings_report import resolved_settings  # every resolved setting, each method's config included

    return [f"{r.section}: {r.setting} = {r.value!r}" for r in resolved_settings(profile, dataset)]


def read_runs(run_dir: Path, notebooks: list[str], profile: str, seed: int, dataset: str | None
              ) -> dict[str, dict[str, Any]]:
    """The results files of the notebooks' last runs in ``run_dir``, by notebook, once each is known to be a run of
    ``profile``, ``seed`` and ``dataset`` that lists its cache entries."""
    runs = {}
    for number in notebooks:
        record = run_dir / f"{number}_results.json"
        rerun = f"run it first: python -m tsbd_utils.reproduce --profile {profile} --seed {seed} --only {number}"
        if not record.is_file():
            raise BundleError(f"notebook {number} has no run in {run_dir} ({record.name} is missing); {rerun}")
        run = json.loads(record.read_text())
        prov = run.get("provenance", {})
        asked = {"profile": profile, "seed": seed, **({"dataset": dataset} if dataset else {})}
        found = {k: prov.get(k) for k in asked}
        if found != asked:
            raise BundleError(f"the run of notebook {number} in {run_dir} was made with {found}, not {asked}; {rerun}")
        if run.get("cache", {}).get("entries") is None:
            raise BundleError(f"the run of notebook {number} in {run_dir} does not list its cache entries (an older "
                              f"version wrote it); {rerun}")
        runs[number] = run
    return runs


def needed_entries(runs: dict[str, dict[str, Any]], run_dir: Path) -> dict[str, list[str]]:
    """Entry name -> the notebooks that used it, from the runs of :func:`read_runs`."""
    needed: dict[str, list[str]] = {}
    for number, run in runs.items():
        for entry in run["cache"]["entries"]:  # "<kind>/<key>"
            name = f"{entry}.safetensors"
            if not ENTRY_NAME.match(name):
                raise BundleError(f"the run of notebook {number} in {run_dir} lists {entry!r}, not a cache entry")
            needed.setdefault(name, []).append(number)
    return needed


def export(cache_root: Path, run_dir: Path, out: Path, *, profile: str = "quick", seed: int = 0,
           dataset: str | None = None, notebooks: list[str] | None = None) -> dict[str, Any]:
    """Write the bundle of ``notebooks`` (default: every notebook with a run in ``run_dir``) to ``out`` and return
    its manifest. Every entry is checked first; one that is missing or damaged stops the export, naming it."""
    from .session import git_commit

    chosen = notebooks or sorted(p.name[:2] for p in run_dir.glob("[0-9][0-9]_results.json"))
    if not chosen:
        raise BundleError(f"no notebook has run in {run_dir}; run `make reproduce` (or the notebooks) first")
    runs = read_runs(run_dir, chosen, profile, seed, dataset)
    needed = needed_entries(runs, run_dir)
    entries = []
    for name, users in sorted(needed.items()):
        kind, key = ENTRY_NAME.match(name).groups()
        path = cache_root / name
        try:
            read_entry(path, kind)
        except Exception as err:  # absent, truncated, edited: the instructor recomputes it before handing it out
            raise BundleError(f"cache entry {name} (used by notebook(s) {', '.join(users)}) cannot go into the bundle: "
                              f"{type(err).__name__}: {err}; rerun notebook {users[0]} on the cache {cache_root}"
                              ) from None
        entries.append({"name": name, "kind": kind, "key": key, "size": path.stat().st_size,
                        "sha256": _sha256(path), "notebooks": users})
    import torch
    import torchvision

    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "profile": profile, "seed": seed,
        "dataset": dataset or runs[chosen[0]]["provenance"].get("dataset"), "notebooks": chosen,
        # the exporting checkout, then each run's own commit and versions (what the entries were computed with)
        "commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": {n: {k: run["provenance"].get(k) for k in ("git_commit", "versions", "device", "device_name")}
                 for n, run in runs.items()},
        "versions": {"tsbd_utils": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
        "settings": _settings_rows(profile, dataset), "entries": entries,
    }
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", COMPRESSION, compresslevel=COMPRESS_LEVEL) as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
        for entry in entries:
            archive.write(cache_root / entry["name"], entry["name"])
    return manifest


def _manifest(archive: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except KeyError:
        raise BundleError(f"{path} is a zip file but not a bundle of this course (it has no {MANIFEST})") from None
    except (ValueError, zipfile.BadZipFile, OSError) as err:
        raise BundleError(f"{path}: its {MANIFEST} is unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a bundle of this course ({MANIFEST} does not say format {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path} is bundle format {manifest.get('format_version')!r}; this version reads "
                          f"format {FORMAT_VERSION} (update the course, or ask for a bundle made with this version)")
    entries = manifest.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and ENTRY_NAME.match(str(e.get("name", "")))
                                                for e in entries):
        raise BundleError(f"{path}: its {MANIFEST} lists entries that are not <kind>/<32 hex digits>.safetensors")
    listed, members = [e["name"] for e in entries], set(archive.namelist()) - {MANIFEST}
    if len(set(listed)) != len(listed) or set(listed) != members:
        odd = sorted(members.symmetric_difference(listed))[:3] or ["a name listed twice"]
        raise BundleError(f"{path}: its members are not the entries its manifest lists ({', '.join(odd)})")
    return manifest


def _stage(archive: zipfile.ZipFile, entry: dict[str, Any], staging: Path, path: Path) -> tuple[Path, dict[str, str]]:
    """Copy one member into ``staging`` and check it: the staged file and its metadata, or a BundleError naming
    the entry."""
    name = entry["name"]
    target = staging / name
    target.parent.mkdir(parents=True, exist_ok=True)
    sha, size, limit = hashlib.sha256(), 0, entry.get("size")
    if not isinstance(limit, int) or limit < 0:
        raise BundleError(f"{path}: entry {name} has no valid size in the manifest ({limit!r})")
    try:
        with archive.open(name) as source, open(target, "wb") as sink:
            for block in iter(lambda: source.read(_CHUNK), b""):
                sha.update(block)
                size += len(block)
                if size > limit:  # never unpack more than the manifest promised (a crafted archive could)
                    break
                sink.write(block)
    except (zipfile.BadZipFile, OSError, EOFError) as err:  # a damaged member fails its CRC or its deflate stream
        raise BundleError(f"{path}: entry {name} is damaged ({type(err).__name__}: {err})") from None
    if size != entry.get("size") or sha.hexdigest() != entry.get("sha256"):
        raise BundleError(f"{path}: entry {name} does not match its manifest (size {size} for {entry.get('size')}, "
                          "or its SHA-256 differs): the bundle was altered or damaged; ask for a fresh copy")
    try:
        meta, _ = read_entry(target, name.split("/")[0])
    except Exception as err:
        raise BundleError(f"{path}: entry {name} fails the cache's checks ({type(err).__name__}: {err})") from None
    return target, meta


def import_bundle(path: Path, cache_root: Path, profile: str | None = None) -> ImportReport:
    """Check the whole bundle at ``path``, then place its entries in the cache at ``cache_root`` (see the module
    docstring). ``profile``: refuse a bundle of another profile."""
    path, cache_root = Path(path), Path(cache_root)
    if not path.is_file():
        raise BundleError(f"the bundle {path} is not a file")
    if path.stat().st_size == 0:
        raise BundleError(f"the bundle {path} is an empty file (a failed copy or download?)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise BundleError(f"{path} is not a bundle: not a zip file ({type(err).__name__}: {err})") from None
    report = ImportReport()
    with archive:
        manifest = report.manifest = _manifest(archive, path)
        if profile is not None and manifest.get("profile") != profile:
            raise BundleError(f"{path} is a bundle of profile {manifest.get('profile')!r}, not {profile!r}")
        created = not cache_root.exists()
        cache_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".bundle-import-", dir=cache_root))  # same filesystem: renames
        try:
            ready = []
            for entry in manifest["entries"]:
                if (cache_root / entry["name"]).is_file() and _sha256(cache_root / entry["name"]) == entry["sha256"]:
                    report.present.append(entry["name"])
                    continue
                staged, meta = _stage(archive, entry, staging, path)
                problem = entry_version_problem(meta)
                if problem:
                    report.stale[entry["name"]] = problem
                else:
                    ready.append((staged, entry["name"]))
            for staged, name in ready:  # all checked: now each entry appears whole, by an atomic rename
                (cache_root / name).parent.mkdir(exist_ok=True)
                os.replace(staged, cache_root / name)
                report.placed.append(name)
        except BaseException:
            if created and not report.placed:
                shutil.rmtree(cache_root, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    then = set(manifest.get("settings", []))
    try:
        now = set(_settings_rows(manifest["profile"], manifest.get("dataset")))
    except ValueError as err:  # a profile or dataset this version no longer has
        now = {f"(the bundle's profile cannot be resolved here: {err})"}
    report.changed_settings = ([f"bundle: {s}" for s in sorted(then - now)]
                               + [f"now:    {s}" for s in sorted(now - then)])
    return report


def default_bundle(profile: str, seed: int) -> Path:
    """Where ``export`` writes when no ``--out`` is given: beside the runs it was chosen from."""
    from .paths import run_dir

    return run_dir(profile) / f"tsbd-bundle-{profile}-seed{seed}.zip"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from .config import PROFILES
    from .data import DATASETS
    from .paths import cache_dir, cache_folder_problem, checked_path, run_dir, unusable_folder
    from .rng import check_seed

    parser = argparse.ArgumentParser(prog="python -m tsbd_utils.bundle", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("export", help="write the cache entries that notebooks need into one bundle file")
    out.add_argument("--profile", default="quick", help=f"one of: {', '.join(PROFILES)} (default quick)")
    out.add_argument("--seed", type=int, default=0, help="the runs' seed (default 0)")
    out.add_argument("--dataset", default=None, help="the runs' dataset (default: the profile's)")
    out.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers (default: every one that has run)")
    out.add_argument("--cache-dir", default=None, help="default: $TSBD_CACHE_DIR, else .cache/ in the project")
    out.add_argument("--run-dir", default=None, help="where the runs are recorded (default: runs/<profile>/)")
    out.add_argument("--out", default=None, help="the bundle to write (default: runs/<profile>/tsbd-bundle-...zip)")
    into = commands.add_parser("import", help="check a bundle, then place its entries in the cache")
    into.add_argument("bundle", help="the bundle file")
    into.add_argument("--cache-dir", default=None, help="default: $TSBD_CACHE_DIR, else .cache/ in the project")
    into.add_argument("--profile", default=None, help="refuse a bundle of another profile")
    args = parser.parse_args(argv)
    try:
        cache = cache_dir(checked_path("--cache-dir", args.cache_dir)).absolute()
        if args.command == "export":
            PROFILES.check(args.profile)
            if args.dataset is not None:
                DATASETS.check(args.dataset)
            check_seed(args.seed, "--seed")
            for number in args.only or []:
                if len(number) != 2 or not number.isdigit():
                    raise ValueError(f"--only takes two-digit notebook numbers such as 05, got {number!r}")
            runs = run_dir(args.profile, checked_path("--run-dir", args.run_dir))
            target = Path(checked_path("--out", args.out) or default_bundle(args.profile, args.seed)).absolute()
            problem = unusable_folder(target.parent)
            if problem:
                raise ValueError(f"--out: the folder of {target} cannot be used: {problem}")
            start = time.perf_counter()
            manifest = export(cache, runs, target, profile=args.profile, seed=args.seed, dataset=args.dataset,
                              notebooks=args.only)
            total = sum(e["size"] for e in manifest["entries"])
            print(f"{target}: {len(manifest['entries'])} entries of notebooks {', '.join(manifest['notebooks'])}, "
                  f"{total / 1e6:.1f} MB in the cache, {target.stat().st_size / 1e6:.1f} MB bundled, "
                  f"in {time.perf_counter() - start:.0f} s")
        else:
            if args.profile is not None:
                PROFILES.check(args.profile)
            problem = cache_folder_problem(cache)
            if problem:
                raise ValueError(f"the cache folder {cache} cannot be used: {problem}")
            start = time.perf_counter()
            report = import_bundle(Path(checked_path("bundle", args.bundle)), cache, args.profile)
            print(report.summary())
            print(f"into {cache} in {time.perf_counter() - start:.0f} s")
    except ValueError as err:  # BundleError too
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
