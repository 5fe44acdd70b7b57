"""The settings the two command lines share, ``python -m tsbd_utils.reproduce`` and ``python -m tsbd_utils.grid``:
their options and one check of them all, before anything starts.

Both take the notebooks' parameters (profile, dataset, seed, device; the data, cache and run folders) under the same
option names, with the same help and the same checks. :func:`check` refuses a bad value with a message that names the
option, the value and what is allowed, and then reads the dataset once, so that a missing or damaged file stops the
run before any notebook or cell starts. Nothing is created or written here, except that a dataset found nowhere is
downloaded now (as the first notebook would), into a scratch folder first, so that a failed download leaves nothing
behind.

Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> settings = check(parser.parse_args(["--profile", "smoke", "--seed", "3"]))
    >>> settings.parameters()["SEED"]
    3
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import read_only_from_env
from .config import PROFILES
from .data import DATASETS, DatasetNotFoundError, checked_named_dir, locate, read_splits
from .device import resolve_device
from .paths import cache_dir, cache_folder_problem, checked_path, run_dir, unusable_folder
from .rng import SEED_MAX, check_seed

DEVICES = "auto, cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class RunSettings:
    """The checked settings of a run; folders are absolute, so that notebooks and workers elsewhere see the same."""

    profile: str
    dataset: str | None  # None: the profile's
    seed: int
    device: str
    cache_dir: Path  # where the cache is (named, else $TSBD_CACHE_DIR, else .cache/ in the project)
    cache_read_only: bool  # --cache-read-only or $TSBD_CACHE_READ_ONLY
    run_dir: Path  # named, else runs/<profile>/
    data_dir: Path | None  # named, else $TSBD_DATA_DIR, else None: the Debian package, then a download

    def parameters(self) -> dict[str, Any]:
        """The notebooks' parameters for these settings (FIGURES_DIR is the caller's). Folders go as the absolute
        paths checked here: a kernel runs in the notebooks' folder, where a relative one would mean another."""
        parameters = {
            "PROFILE": self.profile,
            "DATASET": self.dataset,
            "SEED": self.seed,
            "DEVICE": self.device,
            "CACHE_DIR": str(self.cache_dir),
            "RUN_DIR": str(self.run_dir),
        }
        if self.data_dir is not None:
            parameters["DATA_DIR"] = str(self.data_dir)
        return parameters


def add_arguments(parser: argparse.ArgumentParser, *, run_dir_help: str = "default: runs/<profile>/") -> None:
    """Add the shared options to ``parser``."""
    parser.add_argument("--profile", default="quick", help=f"one of: {', '.join(PROFILES)} (default quick)")
    parser.add_argument("--dataset", default=None, help=f"one of: {', '.join(DATASETS)} (default: the profile's)")
    parser.add_argument("--seed", type=int, default=0, help=f"an int in 0..{SEED_MAX} (default 0)")
    parser.add_argument("--device", default="auto", help=f"{DEVICES} (default auto)")
    parser.add_argument("--data-dir", default=None, help="a folder holding the dataset (default: see README.md)")
    parser.add_argument("--cache-dir", default=None,
                        help="default: $TSBD_CACHE_DIR, else .cache/ in the project (a shared folder on a cluster)")
    parser.add_argument("--cache-read-only", action="store_true",
                        help="read the cache, never write it (a shared, filled cache; also $TSBD_CACHE_READ_ONLY=1)")
    parser.add_argument("--run-dir", default=None, help=run_dir_help)


def check(args: argparse.Namespace, outputs: Mapping[str, Any] | None = None) -> RunSettings:
    """The settings of ``args`` (parsed with :func:`add_arguments`' options), or a ValueError naming what is wrong.

    ``outputs`` names more folders the run writes to, by option (``{"--figures-dir": path}``), checked like the run
    folder. The order: names, seed, device, the folders, and last the dataset (found, else downloaded, and read)."""
    PROFILES.check(args.profile)
    if args.dataset is not None:
        DATASETS.check(args.dataset)
    check_seed(args.seed, "--seed")
    resolve_device(args.device)
    named = {option: checked_path(option, getattr(args, attr)) for option, attr in
             (("--data-dir", "data_dir"), ("--cache-dir", "cache_dir"), ("--run-dir", "run_dir"))}
    try:
        data = checked_named_dir(named["--data-dir"])  # --data-dir, else $TSBD_DATA_DIR, else None
    except DatasetNotFoundError as err:
        raise ValueError(str(err)) from None
    read_only = args.cache_read_only or read_only_from_env()
    cache = cache_dir(named["--cache-dir"]).absolute()
    problem = cache_folder_problem(cache, read_only)
    if problem:
        source = ("--cache-dir" if named["--cache-dir"] is not None else
                  "$TSBD_CACHE_DIR" if os.environ.get("TSBD_CACHE_DIR") else "the default cache")
        raise ValueError(f"{source}: the cache folder {cache} cannot be used: {problem}")
    runs = run_dir(args.profile, named["--run-dir"]).absolute()
    for option, folder in {"--run-dir": runs, **{k: Path(v) for k, v in (outputs or {}).items()}}.items():
        problem = unusable_folder(checked_path(option, folder))
        if problem:
            raise ValueError(f"{option}: the folder {folder} cannot be used: {problem}")
    spec = DATASETS[args.dataset or PROFILES[args.profile].dataset]
    try:  # the data last: a missing dataset is fetched here, so only once every other setting is known good
        place = locate(spec, named["--data-dir"])
    except DatasetNotFoundError as err:
        raise ValueError(str(err)) from None
    read_splits(spec, place)  # about a second: a damaged file stops the run here (a ValueError naming it)
    return RunSettings(args.profile, args.dataset, args.seed, args.device, cache, read_only, runs,
                       data.absolute() if data is not None else None)

