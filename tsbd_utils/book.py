"""The course as a website: the executed quick-profile notebooks rendered as a book with Jupyter Book.

    python -m tsbd_utils.book build                # what `make book` runs: the site in runs/book/_build/html
    python -m tsbd_utils.book export runs/quick    # what `make reproduce` runs after a quick-profile run

The book never executes a notebook. It renders what the last quick reproduction computed:

* :func:`export` copies an executed notebook of ``runs/quick/`` into ``figures/executed/`` (committed), with the
  run's folders replaced by the project's relative ones, papermill's injected cell, timings and progress bars
  dropped, and the run's time and cache state kept in its metadata (``tsbd_run``);
* :func:`assemble` lays out a Jupyter Book source folder: ``notebooks/book/`` (configuration, landing page,
  references), a table of contents in the notebooks' order, each executed notebook with a note on its run time
  and a link to the notebook itself, and the landing page's Table 1 and take-aways;
* :func:`build` runs ``jupyter-book build`` on it, offline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat

from .atomic import atomic_path
from .exports import markdown_rows, table1_file
from .paths import checked_path, notebooks, project_root, unusable_folder

EXECUTED = Path("figures") / "executed"  # the executed copies the book renders, relative to the project
SOURCE = Path("notebooks") / "book"  # configuration, landing page template, references
TABLE = table1_file("figures")  # notebook 07's Markdown export, relative to the project
HEATMAP = Path("figures") / "07_der_heatmap.png"
RELATIVE = {"CACHE_DIR": ".cache", "FIGURES_DIR": "figures", "RUN_DIR": "runs/quick", "DATA_DIR": "data"}
MARKERS = ("{{ table1 }}", "{{ takeaways }}")
# Progress bars: a static page cannot run them, and their saved text is the bar as it started (0%).
WIDGET = "application/vnd.jupyter.widget-view+json"


def _scrub(value: Any, replacements: Sequence[tuple[str, str]]) -> Any:
    """``value`` (an output's JSON) with every replacement applied to its strings; images are left alone."""
    if isinstance(value, str):
        for old, new in replacements:
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [_scrub(v, replacements) for v in value]
    if isinstance(value, dict):
        return {k: v if k.startswith("image/") else _scrub(v, replacements) for k, v in value.items()}
    return value


def _replacements(parameters: dict[str, Any], root: Path) -> list[tuple[str, str]]:
    pairs = {str(v).rstrip("/"): RELATIVE[k] for k, v in parameters.items()
             if k in RELATIVE and isinstance(v, str) and v.startswith("/")}
    pairs.setdefault(str(root), ".")
    pairs.setdefault(str(Path.home()), "~")
    pairs.pop("", None)
    return sorted(pairs.items(), key=lambda p: -len(p[0]))  # the longest first: a folder inside another


def export(executed: Path, dest: Path, *, root: Path | None = None) -> Path:
    """Copy the executed quick-profile notebook ``executed`` (with its ``NN_results.json`` beside it) into the
    folder ``dest``, ready for the book; return the copy's path. The copy keeps the times of the last run that
    computed something and of the last run that read everything from the cache (``tsbd_run``)."""
    target, text = _exported(executed, dest, root)
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return target


def _exported(executed: Path, dest: Path, root: Path | None) -> tuple[Path, str]:
    """Where :func:`export` writes ``executed`` and what; an error (nothing written) for a notebook the book must
    not show."""
    root = root or project_root() or Path.cwd()
    nb = nbformat.read(executed, as_version=4)
    papermill = nb.metadata.get("papermill", {})
    parameters = papermill.get("parameters", {})
    if parameters.get("PROFILE") != "quick":
        raise ValueError(f"{executed} ran in profile {parameters.get('PROFILE')!r}; the book shows 'quick' runs only")
    if any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs):
        raise ValueError(f"{executed} holds an error output; rerun it before it goes into the book")
    results = json.loads((executed.parent / f"{executed.name[:2]}_results.json").read_text())
    replacements = _replacements(parameters, root)
    cells = []
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            continue  # the run's own folders; a reader sees the notebook's defaults
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if cell.cell_type == "code":
            cell.outputs = [nbformat.from_dict(_scrub(dict(o), replacements)) for o in cell.outputs
                            if WIDGET not in o.get("data", {})]
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)
    provenance = results.get("provenance", {})
    this = {"seconds": round(float(papermill.get("duration") or results.get("seconds") or 0.0), 1),
            "new_results": int(results.get("cache", {}).get("misses", 0))}
    target = dest / executed.name
    run = nbformat.read(target, as_version=4).metadata.get("tsbd_run", {}) if target.is_file() else {}
    run = {**run, "profile": "quick", "threads": provenance.get("threads"), "cpu": provenance.get("device_name"),
           "device": provenance.get("device")}
    run["computed" if this["new_results"] else "cached"] = this
    nb.metadata.pop("papermill", None)
    nb.metadata["tsbd_run"] = run
    return target, nbformat.writes(nb) + "\n"


def export_run(run_dir: Path, dest: Path, names: Sequence[str] | None = None, root: Path | None = None) -> list[Path]:
    """:func:`export` every executed notebook of ``run_dir`` (or those named ``names``), in order; all or none: each
    is checked before any is written."""
    paths = notebooks(run_dir)
    if names is not None:
        wanted = set(names)
        paths = [p for p in paths if p.name in wanted]
    if not paths:
        raise ValueError(f"{run_dir} holds no executed notebook to export (none matches NN_*.ipynb)")
    exported = [_exported(p, dest, root) for p in paths]
    for target, text in exported:
        with atomic_path(target) as tmp:
            tmp.write_text(text)
    return [target for target, _ in exported]


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def run_note(nb: nbformat.NotebookNode, name: str) -> str:
    """The note under a chapter's title: how long the notebook took in the quick profile, and where to get it."""
    run = nb.metadata.get("tsbd_run", {})
    machine = f"a CPU ({run.get('threads') or '?'} threads, {run.get('cpu') or 'unknown'})"
    times = []
    if "computed" in run:
        times.append(f"its last run that computed results ({run['computed']['new_results']} new ones, with those of "
                     f"the notebooks before it cached) took **{_minutes(run['computed']['seconds'])}**")
    else:
        times.append("no run that computed its cached results is recorded with this copy")
    if "cached" in run:
        times.append(f"its last run that found every cached result it reads took "
                     f"**{_minutes(run['cached']['seconds'])}**")
    return "\n".join([
        "```{admonition} Run it yourself",
        ":class: tip",
        f"This page is the notebook as `make reproduce` executed it in the quick profile (Fashion-MNIST) on {machine}: "
        + "; ".join(times) + ".",
        f"Get the notebook without outputs: {{download}}`{name} <downloads/{name}>`. In a clone of the course, "
        f"`make lab` opens JupyterLab on the notebooks; this one is then at "
        f"[localhost:8888/lab/tree/{name}](http://localhost:8888/lab/tree/{name}).",
        "```",
    ])


def _chapter(executed: Path, source: Path) -> nbformat.NotebookNode:
    """The executed notebook with the source notebook's current prose (code cells must match) and the run note."""
    nb = nbformat.read(executed, as_version=4)
    src = nbformat.read(source, as_version=4)
    code = [(c.get("id"), c.source) for c in nb.cells if c.cell_type == "code"]
    if code != [(c.get("id"), c.source) for c in src.cells if c.cell_type == "code"]:
        raise ValueError(f"{source.name} has changed since its last quick run ({executed}); run "
                         f"`make reproduce` (or `python -m tsbd_utils.reproduce --only {source.name[:2]}`) first")
    prose = {c.get("id"): c.source for c in src.cells if c.cell_type == "markdown"}
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.get("id") in prose:
            cell.source = prose[cell.get("id")]
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(run_note(nb, source.name)))
    return nb


def _title(nb: nbformat.NotebookNode) -> str:
    return nb.cells[0].source.splitlines()[0].lstrip("# ").strip()


def _takeaways(chapters: dict[str, nbformat.NotebookNode]) -> str:
    parts = []
    for name, nb in chapters.items():
        last = nb.cells[-1].source.split("\n", 1)  # "## What to take away" and its bullets
        parts.append(f"### [{_title(nb)}]({name})\n\n{last[1].strip() if len(last) > 1 else ''}\n")
    return "\n".join(parts)


def assemble(out: Path, root: Path | None = None) -> Path:
    """Write the book's source folder ``out`` (emptied first) from the committed sources; return it."""
    root = root or project_root() or Path.cwd()
    executed = notebooks(root / EXECUTED)
    sources = {p.name: p for p in notebooks(root / "notebooks")}
    if [p.name for p in executed] != list(sources):
        raise ValueError(f"{EXECUTED} holds {[p.name for p in executed]}, the notebooks are {list(sources)}; "
                         "run `make reproduce` to refresh the executed copies")
    chapters = {p.name: _chapter(p, sources[p.name]) for p in executed}  # checked before the old folder goes
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(root / SOURCE, out)
    (out / "downloads").mkdir()
    for name, nb in chapters.items():
        (out / name).write_text(nbformat.writes(nb) + "\n")
        shutil.copy2(sources[name], out / "downloads" / name)
    (out / "figures").mkdir()
    shutil.copy2(root / HEATMAP, out / "figures" / HEATMAP.name)
    table = "\n".join(markdown_rows(root / TABLE))
    intro = (out / "intro.md").read_text()
    if any(m not in intro for m in MARKERS):
        raise ValueError(f"{SOURCE / 'intro.md'} must hold the markers {MARKERS}")
    (out / "intro.md").write_text(intro.replace(MARKERS[0], table).replace(MARKERS[1], _takeaways(chapters)))
    toc = ["format: jb-book", "root: intro", "parts:", "  - caption: The notebooks", "    chapters:"]
    toc += [f"      - file: {Path(name).stem}" for name in chapters]
    toc += ["  - caption: Reference", "    chapters:", "      - file: references"]
    (out / "_toc.yml").write_text("\n".join(toc) + "\n")
    return out


def build(out: Path, root: Path | None = None) -> Path:
    """Assemble the book in ``out/src`` and build its HTML into ``out/_build/html``; return that folder."""
    src = assemble(out / "src", root)
    command = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    if command is None:
        raise RuntimeError("jupyter-book is not installed: `make setup` installs it (pyproject.toml)")
    html = out / "_build" / "html"
    if html.exists():
        shutil.rmtree(html)
    subprocess.run([command, "build", str(src), "--path-output", str(out), "--builder", "html", "--quiet"],
                   check=True)
    return html


def main(argv: Sequence[str] | None = None) -> int:
    root = project_root() or Path.cwd()
    parser = argparse.ArgumentParser(prog="python -m tsbd_utils.book", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="assemble and build the site (no notebook is executed)")
    b.add_argument("--out", default=str(root / "runs" / "book"), help="default: runs/book/")
    e = commands.add_parser("export", help="copy executed quick-profile notebooks into figures/executed/")
    e.add_argument("run_dir", help="a folder of executed notebooks, such as runs/quick")
    e.add_argument("--dest", default=str(root / EXECUTED))
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            out = _output("--out", args.out)
            html = build(out.resolve(), root)
            print(f"the book: {html / 'index.html'}")
        else:
            run_dir = checked_path("run_dir", args.run_dir, optional=False)
            if not run_dir.is_dir():
                raise ValueError(f"run_dir {run_dir} is not a folder of executed notebooks")
            for path in export_run(run_dir, _output("--dest", args.dest), root=root):
                print(f"exported {path}")
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _output(option: str, value: str) -> Path:
    """The folder an option names for writing, or an error naming it (nothing is created here)."""
    folder = checked_path(option, value, optional=False)
    problem = unusable_folder(folder)
    if problem:
        raise ValueError(f"{option}: the folder {folder} cannot be used: {problem}")
    return folder


if __name__ == "__main__":
    sys.exit(main())
