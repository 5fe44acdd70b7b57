"""Where things go: the project root, the artifact cache, runs and figures.

The project root is found from the installed package (``make`` installs it editable), so the
default locations do not depend on the directory a notebook or script runs from.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"  # the course's numbered notebooks (and their executed copies)


def notebooks(folder: str | os.PathLike) -> list[Path]:
    """The numbered notebooks of ``folder`` in teaching order."""
    return sorted(Path(folder).glob(NOTEBOOK_GLOB))


def project_root() -> Path | None:
    """The source checkout holding this package, or None for a non-editable install."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "tsbd-utils"' in pyproject.read_text():
        return root
    return None


def checked_path(name: str, value: object, *, optional: bool = True) -> Path | None:
    """``value``, a folder parameter or option called ``name``, as a path (``~`` expanded); None stays None where it
    is ``optional``. Anything but a non-empty string or path is an error naming ``name``: an empty string or a
    number must not quietly mean the default folder."""
    if value is None and optional:
        return None
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text.strip():
        allowed = "a folder path (a non-empty string)" + (" or None" if optional and name.isidentifier() else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return Path(text).expanduser()


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` (the CACHE_DIR parameter), else ``$TSBD_CACHE_DIR``, else ``.cache/`` in the project."""
    named = checked_path("CACHE_DIR", explicit)
    if named is not None:
        return named
    if os.environ.get("TSBD_CACHE_DIR"):  # set and not empty; spaces alone, or a number, are an error
        return checked_path("$TSBD_CACHE_DIR", os.environ["TSBD_CACHE_DIR"])
    root = project_root()
    return root / ".cache" if root else Path.home() / ".cache" / "tsbd" / "artifacts"


def run_dir(profile: str, explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` (the RUN_DIR parameter), else ``runs/<profile>/`` in the project."""
    named = checked_path("RUN_DIR", explicit)
    if named is not None:
        return named
    root = project_root() or Path.cwd()
    return root / "runs" / profile


def unusable_folder(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot serve as an output folder (None if it can), found without leaving anything behind:
    an existing path must be a writable folder; a new one needs a writable folder as its nearest existing parent."""
    folder = Path(path).expanduser().absolute()
    probe = folder
    while not os.path.lexists(probe):  # a broken link or a loop is there as a link, though it leads nowhere
        probe = probe.parent
    if not probe.exists():
        where = "" if probe == folder else f", on the way to {folder},"
        return f"{probe}{where} is a symbolic link that leads nowhere (broken, or a loop)"
    if not probe.is_dir():
        return f"{probe} is a file, not a folder" if probe == folder else f"{probe}, on the way to {folder}, is a file"
    if not os.access(probe, os.W_OK | os.X_OK) or not _can_create_in(probe):
        return f"{probe} is not writable" + ("" if probe == folder else f" (needed to create {folder})")
    return None


def _can_create_in(folder: Path) -> bool:
    """Whether a folder can really be made in ``folder``: os.access answers yes to root everywhere, even in
    /proc or on a read-only mount, so the pre-check makes and removes an empty hidden folder."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tsbd-writable-", dir=folder))
    except OSError:
        return False
    return True


def cache_folder_problem(path: str | os.PathLike, read_only: bool = False) -> str | None:
    """Why ``path`` cannot serve as the cache (None if it can), found without leaving anything behind. A cache is
    written to, so it must be a usable output folder; a read-only cache must be an existing folder."""
    folder = Path(path).expanduser().absolute()
    if read_only:
        if not folder.is_dir():
            return f"{folder} is not an existing folder (a read-only cache is only read)"
        return None if os.access(folder, os.R_OK | os.X_OK) else f"{folder} is not readable"
    reason = unusable_folder(folder)
    if reason and folder.is_dir():
        reason += "; to use a cache you may not write to, set TSBD_CACHE_READ_ONLY=1 (or pass --cache-read-only)"
    return reason
