"""The context a notebook runs in: profile, dataset, seed, device, cache and output folders.

A notebook's first code cell after ``parameters`` is::

    S = session.start("00", profile=PROFILE, dataset=DATASET, seed=SEED, device=DEVICE,
                      cache_dir=CACHE_DIR, figures_dir=FIGURES_DIR, run_dir=RUN_DIR)

Everything a notebook needs after that hangs off ``S``; there is no global state, so two
sessions (say, two profiles in one test run) never see each other.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .atomic import atomic_path
from .cache import Cache, CacheEvent
from .config import Profile, resolve
from .data import Splits, checked_named_dir, prepare_for
from .device import configure_threads, resolve_device
from .paths import cache_folder_problem, checked_path, project_root, run_dir as default_run_dir, unusable_folder
from .rng import check_seed


def seconds_by_kind(events: list[CacheEvent]) -> dict[str, dict[str, float]]:
    """Where a run's cached work went: per kind of entry (and its role: "model clean", "model tsbd", "evaluation
    backdoor", ...), how many were computed and read and their seconds, each counted once (lookups nested in a
    computation are its own rows, not part of it). The rest of a notebook's time is work outside the cache."""
    table: dict[str, dict[str, float]] = {}
    for e in events:
        row = table.setdefault(f"{e.kind} {e.role}" if e.role else e.kind,
                               {"computed": 0, "compute_seconds": 0.0, "read": 0, "read_seconds": 0.0})
        row["read" if e.hit else "computed"] += 1
        row["read_seconds" if e.hit else "compute_seconds"] += round(e.exclusive, 3)
    return dict(sorted(table.items()))


def git_commit() -> str | None:
    """The checkout's commit, with ``-dirty`` when it has uncommitted changes; None outside git."""
    root = project_root()
    if root is None:
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def write_json(path: Path, value: Any) -> Path:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    return path


@dataclass
class Session:
    notebook: str  # two digits, the notebook's number
    profile: Profile
    seed: int
    device: torch.device
    cache: Cache
    figures_dir: Path
    run_dir: Path
    data_dir: Path | None = None
    threads: int = 1
    started: float = field(default_factory=time.time)
    _splits: Splits | None = field(default=None, repr=False)

    @property
    def splits(self) -> Splits:
        """The profile's train / test / clean splits (loaded once per session)."""
        if self._splits is None:
            self._splits = prepare_for(self.profile, self.seed, self.data_dir)
        return self._splits

    def savefig(self, fig, slug: str) -> Path:
        """Save ``fig`` as ``<figures_dir>/<NN>_<slug>.png``, show that file in the notebook (when run in a
        Jupyter kernel) and close the figure. The notebook shows the saved PNG itself, byte for byte, so an
        executed notebook, the book built from it and ``figures/`` hold the same picture."""
        import matplotlib.pyplot as plt

        from . import plotting

        path = plotting.savefig(fig, f"{self.notebook}_{slug}", self.figures_dir)
        plt.close(fig)
        plotting.show_png(path)
        return path

    def provenance(self) -> dict[str, Any]:
        import torchvision

        return {
            "notebook": self.notebook,
            "profile": self.profile.name,
            "dataset": self.profile.dataset,
            "seed": self.seed,
            "device": str(self.device),
            "threads": self.threads,
            "device_name": torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else platform.processor() or platform.machine(),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "tsbd_utils": __version__,
            },
            "git_commit": git_commit(),
            "profile_settings": self.profile.summary(),
            # The folder the dataset was read from (None if this notebook never loaded it).
            "data_folder": str(self._splits.source) if self._splits is not None and self._splits.source else None,
        }

    def write_results(self, results: dict[str, Any]) -> Path:
        """Write ``<run_dir>/<NN>_results.json``: the numbers plus provenance and run time."""
        value = {
            "results": results,
            "provenance": self.provenance(),
            "meaningful": self.profile.meaningful,
            "seconds": round(time.time() - self.started, 2),
            "cache": {
                "hits": sum(e.hit for e in self.cache.events),
                "misses": sum(not e.hit for e in self.cache.events),
                # what this notebook read or wrote: a bundle of its entries (tsbd_utils.bundle) serves it again
                "entries": sorted({f"{e.kind}/{e.key}" for e in self.cache.events}),
                "seconds": seconds_by_kind(self.cache.events),
            },
        }
        return write_json(self.run_dir / f"{self.notebook}_results.json", value)

    def variant(self, *, seed: int | None = None, **profile: Any) -> Session:
        """This session (its notebook, cache, device and folders) with another ``seed`` and / or profile settings
        (:func:`~tsbd_utils.config.resolve`'s overrides, such as ``clean_ratio=0.01``). The zoo keys what it
        computes under a variant by the changed settings, so a variant never reads another's models."""
        seed = self.seed if seed is None else check_seed(seed)
        return dataclasses.replace(self, seed=seed, profile=resolve(self.profile, **profile), _splits=None)

    def describe(self) -> str:
        p = self.profile
        lines = [
            f"profile   {p.name}: {p.description}",
            f"dataset   {p.dataset} (train {p.train_size or 'all'}, test {p.test_size or 'all'}, "
            f"clean share {p.clean_ratio:.0%})",
            f"model     {p.model}, width {p.width}",
            f"device    {self.device} ({self.threads} CPU threads)",
            f"seed      {self.seed}",
            f"cache     {self.cache.root}",
            f"figures   {self.figures_dir}",
            f"results   {self.run_dir}",
        ]
        if not p.meaningful:
            lines.append("NOTE      smoke profile: the numbers below only show that the code runs; they mean nothing.")
        return "\n".join(lines)


def start(
    notebook: str,
    *,
    profile: str,
    dataset: str | None = None,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | None = None,
    figures_dir: str = "../figures",
    run_dir: str | None = None,
    data_dir: str | None = None,
    cache_read_only: bool | None = None,
) -> Session:
    """Validate a notebook's parameters and build its :class:`Session`; bad values fail here. ``cache_read_only``
    None reads ``$TSBD_CACHE_READ_ONLY`` (the notebooks' way); a command line passes its checked setting."""
    if not (isinstance(notebook, str) and len(notebook) == 2 and notebook.isdigit()):
        raise ValueError(f"notebook must be two digits such as '00', got {notebook!r}")
    check_seed(seed, "SEED")
    resolved = resolve(profile, dataset=dataset)
    device_ = resolve_device(device)
    # Folder parameters: a path or None (for FIGURES_DIR a path), never an empty string or a number.
    paths = {name: checked_path(name, value, optional=name != "FIGURES_DIR") for name, value in
             (("CACHE_DIR", cache_dir), ("FIGURES_DIR", figures_dir), ("RUN_DIR", run_dir), ("DATA_DIR", data_dir))}
    checked_named_dir(data_dir)  # DATA_DIR (or $TSBD_DATA_DIR) missing or a file: an error naming it, now
    cache = Cache.at(cache_dir, read_only=cache_read_only)  # None: as $TSBD_CACHE_READ_ONLY says
    figures, runs = paths["FIGURES_DIR"], default_run_dir(resolved.name, run_dir)
    folders = {  # checked before anything is trained or written: a bad folder must not cost a run
        "CACHE_DIR": (cache.root, cache_folder_problem(cache.root, cache.read_only)),
        "FIGURES_DIR": (figures, unusable_folder(figures)),
        "RUN_DIR": (runs, unusable_folder(runs)),
    }
    for name, (folder, problem) in folders.items():
        if problem:
            raise ValueError(f"{name} {folder} cannot be used: {problem}")
    session = Session(
        notebook=notebook,
        profile=resolved,
        seed=seed,
        device=device_,
        cache=cache,
        figures_dir=figures,
        run_dir=runs,
        data_dir=paths["DATA_DIR"],
        threads=configure_threads(),
    )
    from . import plotting  # here, not at the top: importing the session (benchmarks, scripts) loads no seaborn

    plotting.setup("paper" if resolved.name == "paper" else "notebook")
    return session
