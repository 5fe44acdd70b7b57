"""Course assignments from the notebooks, with otter-grader: generate the handouts, grade what comes back.

The notebooks of ``notebooks/`` are otter-grader *master* notebooks: a raw ``# ASSIGNMENT CONFIG`` cell, and for
each exercise a ``# BEGIN QUESTION`` block with the reference solution (between ``# BEGIN SOLUTION`` and
``# END SOLUTION``) and its tests (public ones, and hidden ones that only the autograder holds). Papermill runs
them as they are, solutions and tests included, so ``make reproduce`` and ``make test`` check every reference
solution against its own tests.

``python -m tsbd_utils.assignments generate`` (``make assignments``) writes, offline, into ``runs/assignments/``,
for each notebook with exercises:

* ``student/NN_name.ipynb``: the handout, solutions replaced by ``...``, public tests only (``grader.check``);
* ``autograder/NN_name-autograder.zip``: what grades a submission, hidden tests included;
* ``solutions/NN_name.ipynb``: the solved notebook, for the instructor.

The handouts run in the ``smoke`` profile by default (the exercises need no real results; a quick-profile handout
is ``--profile quick``) and write their figures and results next to themselves. ``python -m tsbd_utils.assignments
grade`` (``make grade``) grades a folder of submissions without containers (otter's own ``grade_submission``) and
writes one row of points per submission.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import yaml

from .config import PROFILES
from .paths import project_root, unusable_folder

CONFIG_MARK = "# ASSIGNMENT CONFIG"
QUESTION_MARK = "# BEGIN QUESTION"
HANDOUT_FOLDERS = {"FIGURES_DIR": "figures", "RUN_DIR": "runs"}  # next to the student's notebook


@dataclass(frozen=True)
class Question:
    """One graded exercise of a master notebook, as its ``# BEGIN QUESTION`` cell declares it."""

    notebook: str
    name: str
    points: float


def _raw_config(cell: Any, mark: str) -> dict[str, Any] | None:
    """The YAML under ``mark`` in a raw cell, or None when the cell is not such a cell."""
    if cell.cell_type != "raw" or not cell.source.lstrip().startswith(mark):
        return None
    config = yaml.safe_load(cell.source.lstrip()[len(mark):]) or {}
    if not isinstance(config, dict):
        raise ValueError(f"the {mark!r} cell must hold YAML keys, got {cell.source!r}")
    return config


def questions(path: Path) -> list[Question]:
    """The graded questions of a master notebook with their points (empty for a notebook without exercises)."""
    nb = nbformat.read(path, as_version=4)
    found = []
    for cell in nb.cells:
        config = _raw_config(cell, QUESTION_MARK)
        if config is not None:
            found.append(Question(path.name, str(config["name"]), float(config.get("points", 1))))
    return found


def is_master(path: Path) -> bool:
    """Whether a notebook carries an otter assignment config (and so exercises)."""
    return any(_raw_config(c, CONFIG_MARK) is not None for c in nbformat.read(path, as_version=4).cells)


def set_parameters(nb: nbformat.NotebookNode, **values: Any) -> nbformat.NotebookNode:
    """Change the defaults of the cell tagged ``parameters`` (each name must already be assigned there), keeping
    each line's comment; the values are written as Python literals."""
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"a notebook needs exactly one cell tagged 'parameters', found {len(cells)}")
    cell = cells[0]
    lines = cell.source.split("\n")
    assigned = {}
    for statement in ast.parse(cell.source).body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(
                statement.targets[0], ast.Name):
            assigned[statement.targets[0].id] = statement.value
    unknown = sorted(set(values) - set(assigned))
    if unknown:
        raise ValueError(f"not parameters of this notebook: {', '.join(unknown)}; allowed: {', '.join(assigned)}")
    for name, value in values.items():
        node = assigned[name]
        if node.lineno != node.end_lineno:
            raise ValueError(f"parameter {name} spans several lines; it cannot be rewritten in place")
        line = lines[node.lineno - 1]
        lines[node.lineno - 1] = line[: node.col_offset] + _literal(value) + line[node.end_col_offset:]
    cell.source = "\n".join(lines)
    return nb


def _literal(value: Any) -> str:
    """A Python literal for ``value``, strings in double quotes as the notebooks write them."""
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid Python string literal
    return repr(value)


def _handout_master(path: Path, folder: Path, profile: str) -> Path:
    """A copy of the master notebook whose defaults suit a handout: ``profile``, outputs next to the notebook."""
    nb = nbformat.read(path, as_version=4)
    set_parameters(nb, PROFILE=profile, **HANDOUT_FOLDERS)
    out = folder / path.name
    nbformat.write(nb, out)
    return out


def generate(notebooks: list[Path], out: Path, profile: str = "smoke") -> dict[str, list[Question]]:
    """Run ``otter assign`` on each master notebook and gather the handouts, autograders and solutions in
    ``out``; returns each notebook's questions. Nothing is executed and nothing is downloaded."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    masters = [p for p in notebooks if is_master(p)]
    if not masters:
        raise ValueError(f"none of {[p.name for p in notebooks]} has a '{CONFIG_MARK}' cell: no exercises")
    for sub in ("student", "autograder", "solutions"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    summary = {}
    for path in masters:
        with tempfile.TemporaryDirectory() as tmp:
            master = _handout_master(path, Path(tmp), profile)
            dist = Path(tmp) / "dist"
            done = subprocess.run([sys.executable, "-m", "otter", "assign", "--no-run-tests", "--no-pdfs",
                                   str(master), str(dist)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"otter assign failed on {path.name}:\n{done.stdout}\n{done.stderr}")
            zips = list((dist / "autograder").glob("*.zip"))
            if len(zips) != 1:
                raise RuntimeError(f"otter assign wrote {len(zips)} autograder zips for {path.name}, expected one")
            shutil.copyfile(dist / "student" / path.name, out / "student" / path.name)
            shutil.copyfile(dist / "autograder" / path.name, out / "solutions" / path.name)
            shutil.copyfile(zips[0], out / "autograder" / f"{path.stem}-autograder.zip")
        summary[path.name] = questions(path)
    (out / "questions.json").write_text(json.dumps(
        {nb: [{"name": q.name, "points": q.points} for q in qs] for nb, qs in summary.items()}, indent=1) + "\n")
    return summary


def grade(autograder: Path, submissions: list[Path]) -> list[dict[str, Any]]:
    """Grade each submission with otter-grader's non-containerized grader; one row per submission: its file,
    the points of each question, the total and the possible total."""
    from otter.api import grade_submission

    if not autograder.is_file():
        raise ValueError(f"autograder {autograder} is not a file (make assignments writes autograder/*.zip)")
    rows = []
    for path in submissions:
        results = grade_submission(str(path), str(autograder), quiet=True)
        row: dict[str, Any] = {"submission": path.name}
        for name in sorted(results.results):
            row[name] = results.get_score(name)
        row.update(total=results.total, possible=results.possible)
        if results.catastrophic_error is not None:  # the notebook could not be graded at all
            row["error"] = f"{type(results.catastrophic_error).__name__}: {results.catastrophic_error}"
        rows.append(row)
    return rows


def _parser() -> argparse.ArgumentParser:
    root = project_root() or Path.cwd()
    parser = argparse.ArgumentParser(prog="python -m tsbd_utils.assignments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="student notebooks, autograders and solutions from the master notebooks")
    gen.add_argument("--notebooks", type=Path, default=root / "notebooks", help="folder of master notebooks")
    gen.add_argument("--out", type=Path, default=root / "runs" / "assignments", help="where to write them")
    gen.add_argument("--profile", default="smoke", help=f"the handouts' profile ({', '.join(PROFILES)})")
    gen.add_argument("--only", nargs="*", default=None, help="notebook numbers, such as 00 04")
    gr = sub.add_parser("grade", help="grade a folder of submitted notebooks with an autograder zip")
    gr.add_argument("autograder", type=Path, help="autograder zip written by generate")
    gr.add_argument("submissions", type=Path, help="a folder of submitted .ipynb files, or one file")
    gr.add_argument("--csv", type=Path, default=None, help="write the scores here (default: print them)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _generate(args) if args.command == "generate" else _grade(args)
    except (ValueError, OSError) as err:  # a bad argument or file: one line naming it, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


def _generate(args: argparse.Namespace) -> int:
    PROFILES.check(args.profile)
    if not args.notebooks.is_dir():
        raise ValueError(f"--notebooks {args.notebooks} is not a folder of master notebooks")
    notebooks = sorted(args.notebooks.glob("[0-9][0-9]_*.ipynb"))
    known = sorted(p.name[:2] for p in notebooks)
    if not notebooks:
        raise ValueError(f"--notebooks {args.notebooks} holds no notebook named NN_*.ipynb")
    if args.only is not None:
        unknown = sorted(set(args.only) - set(known))
        if unknown or not args.only:
            raise ValueError(f"--only takes notebook numbers, got {args.only!r}; allowed: {', '.join(known)}")
        notebooks = [p for p in notebooks if p.name[:2] in args.only]
    problem = unusable_folder(args.out)
    if problem:
        raise ValueError(f"--out: the folder {args.out} cannot be used: {problem}")
    summary = generate(notebooks, args.out, args.profile)
    for name, qs in summary.items():
        print(f"{name}: {len(qs)} question(s), {sum(q.points for q in qs):g} points")
    print(f"written to {args.out}/student, {args.out}/autograder and {args.out}/solutions")
    return 0


def _grade(args: argparse.Namespace) -> int:
    if not args.autograder.is_file():
        raise ValueError(f"the autograder {args.autograder} is not a file (make assignments writes one per notebook)")
    subs = sorted(args.submissions.glob("*.ipynb")) if args.submissions.is_dir() else [args.submissions]
    if not subs or not all(s.is_file() for s in subs):
        raise ValueError(f"no .ipynb submissions in {args.submissions}")
    if args.csv is not None and unusable_folder(args.csv.parent):
        raise ValueError(f"--csv {args.csv}: {unusable_folder(args.csv.parent)}")
    rows = grade(args.autograder, subs)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)
        print(f"{len(rows)} submission(s) graded: {args.csv}")
    else:
        for row in rows:
            print(", ".join(f"{k}: {row.get(k)}" for k in fields))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
