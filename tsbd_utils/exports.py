"""Where Table 1 leaves the suite, named once: its export files and the Markdown rows that others copy.

Notebook 07 and the grid write Table 1 and its labelled extras with :meth:`tsbd_utils.zoo.Table1.export`, under
the names below; ``make reproduce`` copies the rows of the Markdown export into README.md, and ``make book`` onto
the book's landing page, both with :func:`markdown_rows`. This module imports nothing heavy (no torch, no pandas),
so the book is built without loading either.
"""

from __future__ import annotations

import os
from pathlib import Path

TABLE1 = "07_table1"  # Table 1: <TABLE1>.csv, .md, .tex and the record <TABLE1>.json
EXTRA = "07_table1_extra"  # the labelled extras beside it (never mixed into Table 1)
FORMATS = ("csv", "md", "tex")


def table1_file(folder: str | os.PathLike, kind: str = "md", *, extra: bool = False) -> Path:
    """The path of Table 1's export (``extra``: of its labelled extras) of format ``kind`` in ``folder``;
    ``kind`` is one of :data:`FORMATS` or ``json`` (the record, Table 1 only)."""
    allowed = FORMATS if extra else (*FORMATS, "json")
    if kind not in allowed:
        raise ValueError(f"unknown Table 1 export format {kind!r}; allowed: {', '.join(allowed)}")
    return Path(folder) / f"{EXTRA if extra else TABLE1}.{kind}"


def markdown_rows(path: str | os.PathLike) -> list[str]:
    """The rows of the pipe table in the Markdown export ``path`` (header and rule included), without the
    caption; an error naming the file when it holds no table."""
    path = Path(path)
    rows = [line for line in path.read_text().splitlines() if line.startswith("|")]
    if not rows:
        raise ValueError(f"{path} holds no Markdown table (no line starts with '|')")
    return rows
