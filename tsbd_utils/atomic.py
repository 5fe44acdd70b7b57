"""Atomic file writes: write a temporary file beside the target, fsync it, then rename it over.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never
a half-written file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

STALE_SECONDS = 24 * 3600  # no write of one file takes a day; a younger temporary file may be another writer's


def _remove_stale(path: Path) -> None:
    """Remove what writers of ``path`` that were killed mid-write (power loss, SIGKILL) left beside it."""
    now = time.time()
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove: it never blocks the write
            if now - leftover.lstat().st_mtime > STALE_SECONDS:
                leftover.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed. Temporary files
    of ``path`` that a killed writer left (older than :data:`STALE_SECONDS`) are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
