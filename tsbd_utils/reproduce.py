"""Run every notebook in order, headlessly, with papermill.

    python -m tsbd_utils.reproduce --profile quick            # what `make reproduce` runs
    python -m tsbd_utils.reproduce --profile paper --device cuda --data-dir /data
    python -m tsbd_utils.reproduce --only 00 01               # a subset, still in order

Executed copies and each notebook's ``NN_results.json`` go to ``runs/<profile>/``; figures go to
``figures/``. A quick-profile run into the project's ``figures/`` also refreshes Table 1 in README.md and the
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

from .cache import READ_ONLY_ENV, read_only_from_env
from .config import PROFILES
from .data import DATASETS, DatasetNotFoundError, checked_named_dir, locate, read_splits
from .device import resolve_device
from .paths import (
    cache_dir as default_cache_dir,
    cache_folder_problem,
    project_root,
    run_dir as default_run_dir,
    unusable_folder,
)

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
# README.md shows the quick profile's Table 1 between these markers, refreshed from notebook 07's export.
TABLE_MARKERS = ("<!-- table1:start -->", "<!-- table1:end -->")
TABLE_EXPORT = "07_table1.md"


def notebooks(folder: Path) -> list[Path]:
    """The numbered notebooks of ``folder`` in teaching order."""
    return sorted(folder.glob(NOTEBOOK_GLOB))


def declared_parameters(path: Path) -> dict[str, Any]:
    """The names and defaults of the notebook's ``parameters`` cell."""
    import papermill

    return papermill.inspect_notebook(str(path))


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
    p.add_argument("--profile", default="quick", help=f"one of: {', '.join(PROFILES)} (default quick)")
    p.add_argument("--dataset", default=None, help=f"one of: {', '.join(DATASETS)} (default: the profile's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--cache-dir", default=None, help="default: $TSBD_CACHE_DIR, else .cache/ in the project")
    p.add_argument("--cache-read-only", action="store_true",
                   help="read the cache, never write it (a shared, pre-filled cache); missing entries are recomputed")
    p.add_argument("--data-dir", default=None, help="a folder holding the dataset (default: see README)")
    p.add_argument("--figures-dir", default=str(root / "figures"))
    p.add_argument("--run-dir", default=None, help="default: runs/<profile>/")
    p.add_argument("--notebooks-dir", default=str(root / "notebooks"))
    p.add_argument("--only", nargs="+", default=None, metavar="NN", help="run only these notebook numbers")
    return p


def _check_settings(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line's settings (None if nothing): names, seed, device, the data folder and
    the folders the run writes to, and last whether the dataset can be found and read. Nothing is created or
    written here, except that a dataset found nowhere is downloaded now (as the first notebook would), into a
    scratch folder first, so that a failed download leaves nothing behind."""
    try:
        PROFILES.check(args.profile)
        if args.dataset is not None:
            DATASETS.check(args.dataset)
        resolve_device(args.device)
    except ValueError as err:
        return str(err)
    if args.seed < 0:
        return f"--seed must be an int >= 0, got {args.seed}"
    try:
        checked_named_dir(args.data_dir)
    except DatasetNotFoundError as err:
        return str(err)
    if not Path(args.notebooks_dir).is_dir():
        return f"--notebooks-dir {args.notebooks_dir} is not a folder"
    try:
        read_only = args.cache_read_only or read_only_from_env()
    except ValueError as err:
        return str(err)
    cache = default_cache_dir(args.cache_dir)
    problem = cache_folder_problem(cache, read_only)
    if problem:
        return f"the cache folder {cache} cannot be used: {problem}"
    outputs = {
        "figures folder": Path(args.figures_dir),
        "run folder": default_run_dir(args.profile, args.run_dir),
    }
    for what, folder in outputs.items():
        reason = unusable_folder(folder)
        if reason:
            return f"the {what} {folder} cannot be used: {reason}"
    spec = DATASETS[args.dataset or PROFILES[args.profile].dataset]
    try:  # the data last: a missing dataset is fetched here, so only once every other setting is known good
        place = locate(spec, args.data_dir)
    except DatasetNotFoundError as err:
        return str(err)
    try:  # read once (about a second): a damaged file stops the run here, not in the first notebook
        read_splits(spec, place)
    except ValueError as err:
        return str(err)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = _check_settings(args)  # every setting is checked before any notebook starts or anything is written
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    folder = Path(args.notebooks_dir)
    selected = notebooks(folder)
    if args.only:
        known = {p.name[:2]: p for p in selected}
        missing = [n for n in args.only if n not in known]
        if missing:
            print(f"error: no notebook numbered {', '.join(missing)}; allowed: {', '.join(known)}", file=sys.stderr)
            return 2
        selected = [known[n] for n in sorted(set(args.only))]
    if not selected:
        print(f"error: no notebooks matching {NOTEBOOK_GLOB} in {folder}", file=sys.stderr)
        return 2
    # Kernels inherit the environment: no progress bars inside the executed notebooks (they would only
    # store "0%" lines there); this runner prints its own progress and time table.
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.cache_read_only:  # the kernels build their caches from the environment
        os.environ[READ_ONLY_ENV] = "1"
    run_dir = default_run_dir(args.profile, args.run_dir).resolve()
    parameters = {
        "PROFILE": args.profile,
        "DATASET": args.dataset,
        "SEED": args.seed,
        "DEVICE": args.device,
        "CACHE_DIR": os.path.abspath(args.cache_dir) if args.cache_dir else None,
        "FIGURES_DIR": os.path.abspath(args.figures_dir),
        "RUN_DIR": str(run_dir),
    }
    if args.data_dir:
        parameters["DATA_DIR"] = os.path.abspath(args.data_dir)
    print(f"profile {args.profile}: {len(selected)} notebook(s); executed copies and results in {run_dir}", flush=True)
    times: list[tuple[str, float, str]] = []
    for i, path in enumerate(selected, 1):
        print(f"[{i}/{len(selected)}] {path.name} ...", flush=True)
        try:
            seconds = run_notebook(path, run_dir / path.name, parameters, progress=sys.stderr.isatty())
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's traceback
            times.append((path.name, float("nan"), "FAILED"))
            print(f"{path.name} failed: {err}\nthe executed copy is {run_dir / path.name}", file=sys.stderr)
            _table(times)
            return 1
        times.append((path.name, seconds, "ok"))
        print(f"[{i}/{len(selected)}] {path.name} done in {seconds:.0f} s", flush=True)
    _table(times)
    root = project_root()
    export = Path(args.figures_dir).resolve() / TABLE_EXPORT
    if args.profile == "quick" and root is not None and export.parent == (root / "figures").resolve():
        if any(p.name.startswith(TABLE_EXPORT[:2]) for p in selected) and export.is_file():
            if refresh_readme_table(root / "README.md", export):
                print(f"README.md: Table 1 refreshed from figures/{TABLE_EXPORT}")
        from . import book  # the website renders these executed copies (make book)

        book.export_run(run_dir, root / book.EXECUTED, [p.name for p in selected], root=root)
        print(f"{book.EXECUTED}: the book's copies of {len(selected)} executed notebook(s) refreshed")
    return 0


def refresh_readme_table(readme: Path, export: Path) -> bool:
    """Replace the table between :data:`TABLE_MARKERS` in ``readme`` with the table rows of ``export``
    (notebook 07's Markdown export), atomically; False (nothing written) without both markers."""
    from .atomic import atomic_path

    text = readme.read_text() if readme.is_file() else ""
    start, end = TABLE_MARKERS
    if start not in text or end not in text or text.index(start) > text.index(end):
        return False
    rows = [line for line in export.read_text().splitlines() if line.startswith("|")]
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
