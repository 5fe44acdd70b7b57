"""Run every notebook in order, headlessly, with papermill.

    python -m tsbd_utils.reproduce --profile quick            # what `make reproduce` runs
    python -m tsbd_utils.reproduce --profile paper --device cuda --data-dir /data
    python -m tsbd_utils.reproduce --only 00 01               # a subset, still in order

Executed copies and each notebook's ``NN_results.json`` go to ``runs/<profile>/``; figures go to ``figures/`` in
the quick profile (the committed set) and to ``runs/<profile>/figures/`` in the others, unless ``--figures-dir``
names a folder. A quick-profile run into the project's ``figures/`` also refreshes Table 1 in README.md and the
executed copies that the book renders (``figures/executed/``, :mod:`tsbd_utils.book`). Trained models come
from the cache, so an interrupted run resumes where it stopped. The same :func:`run_notebook` serves the
tests: a parameter a notebook does not declare is an error there too (papermill itself only warns).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import book, cli
from .atomic import atomic_path
from .cache import READ_ONLY_ENV
from .exports import markdown_rows, table1_file
from .paths import NOTEBOOK_GLOB, checked_path, notebooks, project_root, run_dir

# README.md shows the quick profile's Table 1 between these markers, refreshed from notebook 07's export.
TABLE_MARKERS = ("<!-- table1:start -->", "<!-- table1:end -->")


def declared_parameters(path: Path) -> dict[str, Any]:
    """The names and defaults of the notebook's ``parameters`` cell."""
    import papermill

    try:
        return papermill.inspect_notebook(str(path))
    except Exception as err:  # not JSON, not a notebook, unreadable: name the file, not papermill's internals
        raise ValueError(f"{path} is not a readable notebook ({type(err).__name__}: {err})") from None


def check_parameters(path: Path, parameters: dict[str, Any]) -> None:
    """Refuse parameters the notebook does not declare (papermill would only warn)."""
    declared = declared_parameters(path)
    if not declared:
        raise ValueError(f"{path.name} has no cell tagged 'parameters'")
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(
            f"{path.name} does not declare parameter(s) {', '.join(unknown)}; allowed: {', '.join(declared)}"
        )


def run_notebook(
    path: Path,
    output: Path,
    parameters: dict[str, Any],
    *,
    timeout: int | None = None,
    progress: bool = False,
    log_output: bool = False,
) -> float:
    """Execute ``path`` with ``parameters`` into ``output`` (kernel ``python3``, cwd = its folder); return seconds."""
    import papermill

    check_parameters(path, parameters)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(
        str(path),
        str(output),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(path.parent),
        progress_bar=progress,
        log_output=log_output,
        execution_timeout=timeout,
        report_mode=False,
    )
    return time.perf_counter() - start


def _parser() -> argparse.ArgumentParser:
    root = project_root() or Path.cwd()
    p = argparse.ArgumentParser(prog="python -m tsbd_utils.reproduce", description=__doc__.split("\n\n")[0])
    cli.add_arguments(p)
    p.add_argument("--figures-dir", default=None,
                   help="default: figures/ for the quick profile (the committed set), else runs/<profile>/figures/")
    p.add_argument("--notebooks-dir", default=str(root / "notebooks"))
    p.add_argument("--only", nargs="+", default=None, metavar="NN", help="run only these notebook numbers")
    return p


def _selected(args: argparse.Namespace) -> list[Path]:
    """The notebooks to run, in order, or an error naming what is wrong."""
    folder = checked_path("--notebooks-dir", args.notebooks_dir)
    if not folder.is_dir():
        raise ValueError(f"--notebooks-dir {folder} is not a folder")
    selected = notebooks(folder)
    if not selected:
        raise ValueError(f"no notebooks matching {NOTEBOOK_GLOB} in {folder}")
    if args.only:
        known = {p.name[:2]: p for p in selected}
        missing = [n for n in args.only if n not in known]
        if missing:
            raise ValueError(f"no notebook numbered {', '.join(map(repr, missing))}; allowed: {', '.join(known)}")
        selected = [known[n] for n in sorted(set(args.only))]
    return selected


def _figures_dir(args: argparse.Namespace) -> Path:
    """Where figures go: ``--figures-dir``, else the project's figures/ for the quick profile (the committed set
    the README and the book show), and for the others the run folder's figures/ (runs/<profile>/figures/), so that a
    smoke or paper run never overwrites the committed set."""
    named = checked_path("--figures-dir", args.figures_dir)
    if named is not None:
        return named.absolute()
    root = project_root() or Path.cwd()
    if args.profile == "quick":
        return root / "figures"
    return run_dir(args.profile, checked_path("--run-dir", args.run_dir)).absolute() / "figures"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:  # every setting is checked before any notebook starts or anything is written
        selected = _selected(args)
        figures = _figures_dir(args)
        settings = cli.check(args, outputs={"--figures-dir": figures})
        parameters = {**settings.parameters(), "FIGURES_DIR": str(figures)}
        for path in selected:  # each notebook takes these parameters: a broken one stops the run before the first
            check_parameters(path, parameters)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Kernels inherit the environment: no progress bars inside the executed notebooks (they would only
    # store "0%" lines there); this runner prints its own progress and time table.
    os.environ.setdefault("TQDM_DISABLE", "1")
    if settings.cache_read_only:  # the kernels build their caches from the environment
        os.environ[READ_ONLY_ENV] = "1"
    runs = settings.run_dir
    print(f"profile {args.profile}: {len(selected)} notebook(s); executed copies and results in {runs}", flush=True)
    times: list[tuple[str, float, str]] = []
    for i, path in enumerate(selected, 1):
        print(f"[{i}/{len(selected)}] {path.name} ...", flush=True)
        try:
            seconds = run_notebook(path, runs / path.name, parameters, progress=sys.stderr.isatty())
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's traceback
            times.append((path.name, float("nan"), "FAILED"))
            print(f"{path.name} failed: {err}\nthe executed copy is {runs / path.name}", file=sys.stderr)
            _table(times)
            return 1
        times.append((path.name, seconds, "ok"))
        print(f"[{i}/{len(selected)}] {path.name} done in {seconds:.0f} s", flush=True)
    _table(times)
    root = project_root()
    export = table1_file(figures)
    if args.profile == "quick" and root is not None and figures.resolve() == (root / "figures").resolve():
        if any(p.name.startswith(export.name[:2]) for p in selected) and export.is_file():
            if refresh_readme_table(root / "README.md", export):
                print(f"README.md: Table 1 refreshed from figures/{export.name}")
        # the website renders these executed copies (make book)
        book.export_run(runs, root / book.EXECUTED, [p.name for p in selected], root=root)
        print(f"{book.EXECUTED}: the book's copies of {len(selected)} executed notebook(s) refreshed")
    return 0


def refresh_readme_table(readme: Path, export: Path) -> bool:
    """Replace the table between :data:`TABLE_MARKERS` in ``readme`` with the table rows of ``export``
    (notebook 07's Markdown export), atomically; False (nothing written) without both markers."""
    text = readme.read_text() if readme.is_file() else ""
    start, end = TABLE_MARKERS
    if start not in text or end not in text or text.index(start) > text.index(end):
        return False
    rows = markdown_rows(export)
    head, rest = text.split(start, 1)
    new = f"{head}{start}\n" + "\n".join(rows) + f"\n{end}" + rest.split(end, 1)[1]
    if new != text:
        with atomic_path(readme) as tmp:
            tmp.write_text(new)
    return True


def _table(times: list[tuple[str, float, str]]) -> None:
    width = max(len(name) for name, _, _ in times)
    print(f"\n{'notebook'.ljust(width)}  {'seconds':>8}  status")
    for name, seconds, status in times:
        print(f"{name.ljust(width)}  {seconds:8.1f}  {status}")
    total = sum(s for _, s, _ in times if s == s)
    print(f"{'total'.ljust(width)}  {total:8.1f}")


if __name__ == "__main__":
    sys.exit(main())
