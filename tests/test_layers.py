"""arvc's house rules, read from the source: no import cycles, and no import from a lower layer up.

Every import counts, the ones inside functions too (a lazy import is still a dependency). The layers are
written down once, here, lowest first; packages in one layer may import each other (a cycle between them
still fails). A new top-level module or package must be given a layer before this test passes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, ...]] = [
    ("arvc", "arvc._files", "arvc.device"),
    ("arvc.optim", "arvc.config"),
    ("arvc.audio",),
    ("arvc.model",),
    ("arvc.data", "arvc.modelfile"),
    ("arvc.train",),
    ("arvc.infer", "arvc.compare", "arvc.bench"),
    ("arvc.ui",),
    ("arvc.cli", "arvc.__main__"),
]


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def import_graph(root: Path, top: str = "arvc") -> dict[str, set[str]]:
    """Module -> the modules of `top` it imports, from the source under `root` (nothing is imported)."""
    files = {}
    for path in sorted((root / top).rglob("*.py")):
        name, is_package = _module_name(path, root)
        files[name] = (path, is_package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in files.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:  # `from pkg import submodule` depends on the submodule itself
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in files else source)
        graph[name] = {t for t in targets if (t == top or t.startswith(top + ".")) and t != name}
    return graph


def layer_of(module: str, layers=LAYERS) -> int | None:
    """Index of the layer holding `module`, or None. A package holds its submodules (the longest match
    wins); the top package `arvc` names only its own `__init__`."""
    best, best_length = None, -1
    for index, members in enumerate(layers):
        for member in members:
            inside = "." in member and module.startswith(member + ".")
            if (module == member or inside) and len(member) > best_length:
                best, best_length = index, len(member)
    return best


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    return sorted(
        f"{module} (layer {layer_of(module, layers)}) imports {target} (layer {layer_of(target, layers)})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target, layers) > layer_of(module, layers)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph(SRC)


def test_every_module_has_a_layer(graph):
    missing = [m for m in sorted(graph) if layer_of(m) is None]
    assert not missing, f"give these a layer in LAYERS: {', '.join(missing)}"


def test_no_import_from_a_lower_layer_up(graph):
    found = upward_imports(graph)
    assert not found, "imports from a lower layer up:\n" + "\n".join(found)


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(group) for group in found)


def test_the_checks_catch_a_planted_cycle_and_upward_import(tmp_path):
    """The three checks above pass on arvc only if they can fail: a small tree with each fault."""
    files = {
        "arvc/__init__.py": "",
        "arvc/low/__init__.py": "",
        "arvc/low/a.py": "from arvc.low import b\n",
        "arvc/low/b.py": "def f():\n    from . import a\n",  # a function-level, relative import
        "arvc/high/__init__.py": "from arvc.low.a import x\n",
        "arvc/low/c.py": "import arvc.high\n",
        "arvc/stray.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    layers = [("arvc", "arvc.low"), ("arvc.high",)]
    planted = import_graph(tmp_path)
    assert planted["arvc.low.b"] == {"arvc.low.a"}
    assert cycles(planted) == [["arvc.low.a", "arvc.low.b"]]
    assert upward_imports(planted, layers) == ["arvc.low.c (layer 0) imports arvc.high (layer 1)"]
    assert layer_of("arvc.stray", layers) is None
