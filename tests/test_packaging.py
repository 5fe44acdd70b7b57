"""The set-up files agree with each other: pins, environment.yml, Makefile, CI, README."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def environment_pip_packages() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    pins = set()
    for line in lines[start + 1 :]:
        match = re.fullmatch(r"      - (\S+)", line)
        if not match:
            break
        if not match.group(1).startswith("-e"):
            pins.add(match.group(1))
    return pins


def test_every_dependency_is_pinned_exactly():
    project = pyproject()["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["test"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.+]*", d) for d in deps), deps
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_environment_yml_matches_pyproject():
    project = pyproject()["project"]
    assert environment_pip_packages() == set(project["dependencies"] + project["optional-dependencies"]["test"])
    text = (ROOT / "environment.yml").read_text()
    assert "  - python=3.11" in text and "      - -e ." in text


def test_package_is_listed_explicitly_and_importable():
    assert pyproject()["tool"]["setuptools"]["packages"] == ["tsbd_utils"]
    import tsbd_utils

    assert tsbd_utils.__version__ == pyproject()["project"]["version"]


def test_make_targets_ci_and_readme():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("reproduce:", "test:", "test-quick:", "lab:", "data:"):
        assert re.search(rf"^{target}", makefile, re.M), target
    assert "dataset-fashion-mnist" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and (ROOT / ".ci" / "run").stat().st_mode & 0o111
    readme = (ROOT / "README.md").read_text()
    first_block = readme[readme.index("```") :]
    assert first_block.index("make reproduce") < first_block.index("```", 3)
    assert "make test" in first_block[: first_block.index("```", 3)]


def test_nothing_names_a_machine_path():
    """No tracked text file names this checkout's absolute path or the developer's home folder."""
    forbidden = {str(ROOT), str(Path.home())} - {"/"}
    for path in ROOT.rglob("*"):
        if any(part in {".venv", ".git", ".cache", "runs", "__pycache__", ".pytest_cache"} for part in path.parts):
            continue
        if path.is_file() and path.suffix in {".py", ".md", ".toml", ".yml", ".ipynb", ".cfg", ""}:
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            assert not any(f in text for f in forbidden), path
