"""The package's structure: imports run one way (no circles, nothing imports a higher layer), no private name is
imported across modules, and files stay small. Read from the source with ``ast``, so that imports inside functions
and under ``TYPE_CHECKING`` count too."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tsbd_utils"

# Lowest first. A module may import its own layer or a lower one; within a layer the imports must not circle.
LAYERS = [
    ("foundation", {"registry", "settings", "atomic", "paths", "exports", "rng", "device", "augment", "metrics",
                    "readers", "galleries", "plotting", "explorer_plots", "names", "schedules"}),
    ("data, models, training", {"config", "datasets", "data", "models", "training", "cache", "unlearning",
                                "observations", "observation_stats", "shortcut"}),
    ("methods", {"attacks", "defenses"}),
    ("results", {"session", "tables"}),
    ("zoo", {"zoo", "probes"}),
    ("applications", {"explorers", "exercises", "grid", "cli", "reproduce", "book", "assignments", "settings_report",
                      "bundle"}),
]
LEVEL = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import statement of the module, wherever it stands."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    tree = ast.parse(path.read_text())
    # An import under `if __name__ == "__main__":` runs only when the module is the program (python -m), never when
    # it is imported, so it cannot close a circle: `python -m tsbd_utils.config show` is such an entry point.
    main_guards = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) in (
        "__name__ == '__main__'", '__name__ == "__main__"')]
    skipped = {id(n) for guard in main_guards for n in ast.walk(guard)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub, []) if sub in MODULES else (target, [alias.name]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return [(t, names) for t, names in found if t in MODULES and t != name]


GRAPH = {name: {t for t, _ in _imports(name, path)} for name, path in MODULES.items()}


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    tops = {_top(name) for name in MODULES} - {""}
    assert tops <= set(LEVEL), f"put these in a layer of LAYERS: {sorted(tops - set(LEVEL))}"


def test_imports_never_circle():
    # A package's __init__ importing its own modules, and those modules importing each other, is a graph too:
    # nothing is left out.
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """The imports of ``graph`` that run from a module to a higher layer."""
    return [f"{a} -> {b} ({LAYERS[LEVEL[_top(b)]][0]} above {LAYERS[LEVEL[_top(a)]][0]})"
            for a, targets in graph.items() for b in targets
            if _top(a) and _top(b) and LEVEL[_top(b)] > LEVEL[_top(a)]]


def test_the_graph_holds_the_packages_real_imports():
    # anchors: if resolving relative imports broke, the graph would be empty and the tests below would pass
    assert "tsbd_utils.tables" in GRAPH["tsbd_utils.zoo.table1"]
    assert "tsbd_utils.defenses.base" in GRAPH["tsbd_utils.defenses.common"]
    assert sum(len(targets) for targets in GRAPH.values()) > 300


def test_no_module_imports_a_higher_layer():
    assert _upward(GRAPH) == []


def test_the_layer_check_finds_an_upward_import():
    assert _upward({"tsbd_utils.tables": {"tsbd_utils.zoo.evaluation"}, "tsbd_utils.zoo": {"tsbd_utils.tables"}}) == [
        "tsbd_utils.tables -> tsbd_utils.zoo.evaluation (zoo above results)"]


def _private_uses(name: str, path: Path) -> list[str]:
    """Private names (``_x``, not ``__x__``) this module takes from another: imported, or read off an imported
    module (``metrics._helper``)."""
    def private(n: str) -> bool:
        return n.startswith("_") and not n.endswith("__")

    found = [f"{', '.join(filter(private, names))} from {target}" for target, names in _imports(name, path)
             if any(map(private, names))]
    tree = ast.parse(path.read_text())
    modules = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for alias in node.names if node.level and alias.name in {m.rsplit(".", 1)[-1] for m in MODULES}}
    found += [f"{node.value.id}.{node.attr}" for node in ast.walk(tree) if isinstance(node, ast.Attribute)
              and isinstance(node.value, ast.Name) and node.value.id in modules and private(node.attr)]
    return found


def test_no_private_name_is_taken_from_another_module():
    private = {name: uses for name, path in MODULES.items() if (uses := _private_uses(name, path))}
    assert private == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines; split it by concern"


def test_the_book_and_the_exports_load_neither_torch_nor_pandas():
    code = ("import sys, tsbd_utils.book, tsbd_utils.exports, tsbd_utils.paths; "
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
