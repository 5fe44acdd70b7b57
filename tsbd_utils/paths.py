"""Where things go: the project root, the artifact cache, runs and figures.

The project root is found from the installed package (``make`` installs it editable), so the
default locations do not depend on the directory a notebook or script runs from.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path | None:
    """The source checkout holding this package, or None for a non-editable install."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "tsbd-utils"' in pyproject.read_text():
        return root
    return None


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` (the CACHE_DIR parameter), else ``$TSBD_CACHE_DIR``, else ``.cache/`` in the project."""
    if explicit:
        return Path(explicit)
    if os.environ.get("TSBD_CACHE_DIR"):
        return Path(os.environ["TSBD_CACHE_DIR"])
    root = project_root()
    return root / ".cache" if root else Path.home() / ".cache" / "tsbd" / "artifacts"


def run_dir(profile: str, explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` (the RUN_DIR parameter), else ``runs/<profile>/`` in the project."""
    if explicit:
        return Path(explicit)
    root = project_root() or Path.cwd()
    return root / "runs" / profile


def unusable_folder(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot serve as an output folder (None if it can), found without creating anything: an
    existing path must be a writable folder; a new one needs a writable folder as its nearest existing parent."""
    folder = Path(path).expanduser().absolute()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder" if probe == folder else f"{probe}, on the way to {folder}, is a file"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable" + ("" if probe == folder else f" (needed to create {folder})")
    return None


def cache_folder_problem(path: str | os.PathLike, read_only: bool = False) -> str | None:
    """Why ``path`` cannot serve as the cache (None if it can), found without creating anything. A cache is
    written to, so it must be a usable output folder; a read-only cache must be an existing folder."""
    folder = Path(path).expanduser().absolute()
    if read_only:
        if not folder.is_dir():
            return f"{folder} is not an existing folder (a read-only cache is only read)"
        return None if os.access(folder, os.R_OK | os.X_OK) else f"{folder} is not readable"
    reason = unusable_folder(folder)
    if reason and folder.is_dir():
        reason += "; to use a cache you may not write to, set TSBD_CACHE_READ_ONLY=1 (make reproduce: --cache-read-only)"
    return reason
