"""The course assignments: master notebooks in otter-grader's format, handouts without solutions or hidden tests,
and grading without containers that gives a solved notebook full marks and a half-right one part of them."""

from __future__ import annotations

import ast
import json
import re
import zipfile
from pathlib import Path

import nbformat
import pytest

from tsbd_utils import assignments, paths

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = paths.notebooks(ROOT / "notebooks")
WITH_EXERCISES = [p for p in NOTEBOOKS if p.name[:2] <= "07"]


def test_set_parameters_rewrites_values_and_keeps_comments():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('PROFILE = "quick"  # smoke, quick or paper\nSEED = 0\nFIGURES_DIR = "../f"',
                                          metadata={"tags": ["parameters"]})]
    assignments.set_parameters(nb, PROFILE="smoke", FIGURES_DIR="figures")
    assert nb.cells[0].source == 'PROFILE = "smoke"  # smoke, quick or paper\nSEED = 0\nFIGURES_DIR = "figures"'
    with pytest.raises(ValueError, match="not parameters of this notebook: PROFIL; allowed: PROFILE, SEED"):
        assignments.set_parameters(nb, PROFIL="smoke")


def test_every_notebook_up_to_07_is_a_master_with_named_questions():
    names = []
    for path in WITH_EXERCISES:
        found = assignments.questions(path)
        assert assignments.is_master(path) and found, path.name
        assert all(q.name.startswith(f"q{path.name[:2]}_") and q.points > 0 for q in found), found
        names += [q.name for q in found]
    assert len(names) == len(set(names))


def test_instructor_guide_lists_every_question_with_its_points():
    guide = (ROOT / "notebooks" / "INSTRUCTORS.md").read_text()
    rows = {m[1]: (m[0], float(m[2])) for m in re.findall(r"^\| (\d\d) \| `(q\w+)` \|.*?\| (\d+) \|", guide, re.M)}
    declared = {q.name: (p.name[:2], q.points) for p in WITH_EXERCISES for q in assignments.questions(p)}
    assert rows == declared


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("assignments")
    summary = assignments.generate(NOTEBOOKS, out, profile="smoke")
    assert list(summary) == [p.name for p in WITH_EXERCISES]  # 08 has no exercise and is skipped
    return out


def _solution_lines(master: nbformat.NotebookNode) -> list[str]:
    """The distinctive lines of the reference solutions (inside solution blocks, or marked # SOLUTION)."""
    lines, inside = [], False
    for cell in master.cells:
        if cell.cell_type == "raw":
            inside = {"# BEGIN SOLUTION": True, "# END SOLUTION": False}.get(cell.source.strip(), inside)
            continue
        if cell.cell_type != "code" or not inside:
            continue
        block = False
        for line in cell.source.split("\n"):
            if line.strip() == "# BEGIN SOLUTION":
                block = True
            elif line.strip() == "# END SOLUTION":
                block = False
            elif (block or line.rstrip().endswith("# SOLUTION")) and len(line.strip()) > 12:
                lines.append(line.split("# SOLUTION")[0].strip())
    return lines


def test_handouts_hold_no_solution_and_no_hidden_test(generated):
    for path in WITH_EXERCISES:
        student = nbformat.read(generated / "student" / path.name, as_version=4)
        text = "\n".join(c.source for c in student.cells)
        code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
        solutions = _solution_lines(nbformat.read(path, as_version=4))
        assert solutions, path.name
        assert not [line for line in solutions if line in code], path.name
        assert "thorough=True" not in json.dumps(student.metadata["otter"]["tests"])  # public tests only
        assert "BEGIN" not in text and "TEST CONFIG" not in text
        parameters = next(c.source for c in student.cells if "parameters" in c.metadata.get("tags", []))
        assert 'PROFILE = "smoke"' in parameters and 'FIGURES_DIR = "figures"' in parameters
        checks = [c for c in student.cells if c.source.startswith("grader.check(")]
        assert len(checks) == len(assignments.questions(path))
        with zipfile.ZipFile(generated / "autograder" / f"{path.stem}-autograder.zip") as z:
            hidden = "".join(z.read(n).decode() for n in z.namelist() if n.startswith("tests/"))
        assert "hidden=True" in hidden and hidden.count("@test_case") == 2 * len(checks)


def _answer(nb: nbformat.NotebookNode, start: str, source: str) -> None:
    """Fill the answer cell that begins with ``start`` (as a student would)."""
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(start)]
    assert len(cells) == 1, start
    cells[0].source = source


@pytest.mark.notebook
def test_grading_without_containers(generated, tmp_path, monkeypatch, cache_dir):
    """The solved notebook earns every point; a DER without clipping passes the public check only (half of its
    points) and a wrong letter earns nothing; both graded by running notebook 00 in the smoke profile."""
    monkeypatch.setenv("TSBD_CACHE_DIR", cache_dir)
    zip_path = generated / "autograder" / "00_overview-autograder.zip"
    half = nbformat.read(generated / "student" / "00_overview.ipynb", as_version=4)
    _answer(half, "def der_from_pairs", "def der_from_pairs(before, after):\n"
                                        "    return ((before[1] - after[1]) - (before[0] - after[0]) + 1) / 2")
    _answer(half, "chance_answer", 'chance_answer = "c"')
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    nbformat.write(half, submissions / "half.ipynb")
    (submissions / "solved.ipynb").write_bytes((generated / "solutions" / "00_overview.ipynb").read_bytes())
    rows = {r["submission"]: r for r in assignments.grade(zip_path, sorted(submissions.glob("*.ipynb")))}
    assert rows["solved.ipynb"]["total"] == rows["solved.ipynb"]["possible"] == 3
    assert rows["half.ipynb"]["q00_der"] == pytest.approx(1.0) and rows["half.ipynb"]["q00_chance"] == 0
    assert "error" not in rows["half.ipynb"]


def _exercise_cells(master: nbformat.NotebookNode) -> tuple[set[str], list[str]]:
    """The names the solution cells define, and the sources of the code cells outside every question."""
    defined, outside, depth = set(), [], 0
    for cell in master.cells:
        if cell.cell_type == "raw":
            depth += cell.source.startswith("# BEGIN QUESTION") - cell.source.startswith("# END QUESTION")
            continue
        if cell.cell_type != "code":
            continue
        if depth:
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.FunctionDef):
                    defined.add(node.name)
                elif isinstance(node, ast.Assign):
                    defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        else:
            outside.append(cell.source)
    return defined, outside


def test_the_rest_of_each_notebook_never_uses_the_students_answers():
    """An unsolved exercise must not stop or change the notebook: no cell outside the questions reads a name that a
    solution cell defines (what follows uses the package's implementation), and no such cell reassigns it (the
    grader checks the names as the notebook leaves them)."""
    for path in WITH_EXERCISES:
        defined, outside = _exercise_cells(nbformat.read(path, as_version=4))
        assert defined, path.name
        used = {n.id for source in outside for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
        assert not defined & used, (path.name, sorted(defined & used))


@pytest.mark.parametrize("argv, message", [
    (["generate", "--profile", "bogus"], "unknown profile 'bogus'; allowed: smoke, quick, paper"),
    (["generate", "--only"], "--only takes notebook numbers, got []; allowed: 00, 01"),
    (["generate", "--only", "42"], "--only takes notebook numbers, got ['42']"),
    (["generate", "--notebooks", "{tmp}/none"], "--notebooks {tmp}/none is not a folder"),
    (["generate", "--out", "{tmp}/a-file"], "--out: the folder {tmp}/a-file cannot be used"),
    (["grade", "{tmp}/none.zip", "{tmp}"], "the autograder {tmp}/none.zip is not a file"),
])
def test_the_command_line_names_a_bad_argument_in_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "a-file").write_text("x")
    assert assignments.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err
