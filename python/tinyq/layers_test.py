"""The library's Python imports follow its layers (layers.bzl), without cycles, and its files stay
short. Bazel's visibility checks the BUILD dependencies (//python/tinyq:*_cannot_use_*_test); this
checks the imports themselves, function-level ones included, which no BUILD file sees."""

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

HERE = Path(__file__).resolve().parent
MAX_LINES = 500


def layers(bzl: Path = HERE / "layers.bzl") -> List[str]:
    """LAYERS from layers.bzl, bottom to top (Starlark's list literal parses as Python)."""
    for node in ast.parse(bzl.read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["LAYERS"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{bzl}: no LAYERS list")


def modules(root: Path, names: List[str]) -> Dict[str, Path]:
    """Every library module of every layer, "tinyq.<layer>.<module>" -> its file; tests excluded."""
    found = {}
    for layer in names:
        for path in sorted((root / layer).glob("*.py")):
            if path.stem != "__init__" and not path.stem.endswith("_test"):
                found[f"tinyq.{layer}.{path.stem}"] = path
    return found


def imports(path: Path, known: Set[str]) -> Set[str]:
    """The tinyq modules (and tinyq_testing) one file imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(("tinyq.", "tinyq_testing")))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("tinyq", "tinyq_testing"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in known else node.module)
    return out


def wrong_way(mods: Dict[str, Path], order: List[str]) -> List[str]:
    """Every import of a higher layer, or of the test helpers, as "<importer> -> <imported>"."""
    rank = {layer: i for i, layer in enumerate(order)}
    bad = []
    for name, path in mods.items():
        for dep in sorted(imports(path, set(mods))):
            parts = dep.split(".")
            if parts[0] == "tinyq_testing" or len(parts) < 2 or parts[1] not in rank:
                bad.append(f"{name} -> {dep}")
            elif rank[parts[1]] > rank[name.split(".")[1]]:
                bad.append(f"{name} -> {dep} (layer {parts[1]} is above {name.split('.')[1]})")
    return bad


def cycles(mods: Dict[str, Path]) -> List[Tuple[str, ...]]:
    """The import cycles among the modules: Tarjan's strongly connected components of two or
    more modules, and modules that import themselves."""
    graph = {name: sorted(d for d in imports(path, set(mods)) if d in mods) for name, path in mods.items()}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_layer_is_a_package():
    for layer in layers():
        assert (HERE / layer / "__init__.py").is_file(), f"python/tinyq/{layer}/ is in layers.bzl but is not a package"


def test_imports_run_down_the_layers():
    bad = wrong_way(modules(HERE, layers()), layers())
    assert not bad, "imports against the layers (docs/architecture.md):\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(modules(HERE, layers()))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_file_over_500_lines():
    files = [p for layer in layers() for p in (HERE / layer).glob("*.py")]
    files += list((HERE.parent / "tinyq_testing").glob("*.py"))
    assert len(files) > 50, "the layers' files are missing from the runfiles"
    long = {str(p.relative_to(HERE.parent)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines, split them by concern: {long}"


# The checks themselves, on a small tree with one fault of each kind.
@pytest.fixture
def faulty(tmp_path):
    for layer, files in {"io": {"a": "from tinyq.judge import g\n"},
                         "judge": {"g": "def f():\n    from tinyq.judge import h\n", "h": "import tinyq.judge.g\n",
                                   "t": "from tinyq_testing import testutil\n"}}.items():
        (tmp_path / layer).mkdir()
        for stem, text in files.items():
            (tmp_path / layer / f"{stem}.py").write_text(text)
    return modules(tmp_path, ["io", "judge"])


def test_the_checks_catch_a_wrong_way_import_and_a_cycle(faulty):
    assert wrong_way(faulty, ["io", "judge"]) == ["tinyq.io.a -> tinyq.judge.g (layer judge is above io)",
                                                  "tinyq.judge.t -> tinyq_testing"]
    assert cycles(faulty) == [("tinyq.judge.g", "tinyq.judge.h")]
