"""The set-up files agree with each other (pins, environment.yml, Makefile, CI, README), and the package
installs as a user gets it: a built wheel, not the editable install that ``make`` uses.

An editable install imports from the source tree, so it hides a wheel that leaves files out (a
package list naming only the top package once shipped neither ``attacks`` nor ``defenses``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

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


def test_every_subpackage_is_found_and_importable():
    assert pyproject()["tool"]["setuptools"]["packages"]["find"]["include"] == ["tsbd_utils*"]
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


# Every registry of the package, and the entries a user of the course relies on.
IMPORT_REGISTRIES = textwrap.dedent(
    """
    import json, tsbd_utils
    from tsbd_utils.attacks import ATTACKS
    from tsbd_utils.config import PROFILES
    from tsbd_utils.datasets import DATASETS
    from tsbd_utils.defenses import DEFENSE_CONFIGS, DEFENSES
    from tsbd_utils.models import MODELS
    from tsbd_utils.schedules import SCHEDULES
    from tsbd_utils.shortcut import PERTURBATIONS
    registries = dict(attacks=ATTACKS, profiles=PROFILES, datasets=DATASETS, defenses=DEFENSES,
                      defense_configs=DEFENSE_CONFIGS, models=MODELS, schedules=SCHEDULES,
                      perturbations=PERTURBATIONS)
    print(json.dumps({"file": tsbd_utils.__file__, **{k: sorted(v) for k, v in registries.items()}}))
    """
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the project (the source tree gets no build/ or egg-info)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "tsbd_utils", src / "tsbd_utils", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    # PEP 517 directly, without pip's build isolation: no download, the pinned setuptools of the test extra.
    subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_wheel({str(out)!r})"],
        cwd=src, check=True, capture_output=True, text=True,
    )
    (built,) = out.glob("tsbd_utils-*.whl")
    return built


def test_wheel_ships_every_module(wheel):
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("tsbd_utils/")}
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tsbd_utils").rglob("*.py")}
    assert expected <= shipped, sorted(expected - shipped)
    assert {"tsbd_utils/attacks/__init__.py", "tsbd_utils/defenses/__init__.py"} <= shipped


def test_installed_wheel_imports_every_registry(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--disable-pip-version-check",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True,
    )
    # A fresh interpreter that sees the installed wheel and the pinned dependencies, nothing else: -S skips the
    # site hooks (the editable install's finder among them), and the working folder is not the project.
    deps = sysconfig.get_paths()["purelib"]
    run = subprocess.run(
        [sys.executable, "-S", "-c", IMPORT_REGISTRIES],
        cwd=tmp_path, env={"PYTHONPATH": f"{target}:{deps}", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(found.pop("file")).is_relative_to(target)
    assert len(found["attacks"]) == 8, found["attacks"]
    assert {"ft", "fp", "nad", "nc", "anp", "clp", "ibau", "rnp", "tsbd"} <= set(found["defenses"])
    assert set(found["defense_configs"]) == set(found["defenses"])
    assert {"smoke", "quick", "paper"} <= set(found["profiles"])
    assert all(found.values()), found
