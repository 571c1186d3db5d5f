"""The package's imports point one way: no import cycles, and no module imports a higher layer.

The import graph is read from the source with :mod:`ast` (nothing is imported): every
``import`` and ``from ... import`` counts, relative ones and those inside functions included,
and ``from package import name`` counts as an import of ``package.name`` when that is a module.

Layers, lowest first: core (errors, registry, file I/O, plug-in loading, typed configuration,
version), components (methods, models, data sets, evaluators), runner (the rest of
``mixbench.bench``), apps (the command line, the leaderboard, the package itself and
``python -m mixbench``). A module may import modules of its own layer or lower ones only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mixbench

PACKAGE = "mixbench"
ROOT = Path(mixbench.__file__).resolve().parent

#: Module-name prefixes and their layer; the longest matching prefix wins.
LAYERS = {
    "mixbench.errors": 0,
    "mixbench.registry": 0,
    "mixbench.fileio": 0,
    "mixbench.plugins": 0,
    "mixbench.config": 0,
    "mixbench.version": 0,
    "mixbench.seeding": 0,
    "mixbench.methods": 1,
    "mixbench.models": 1,
    "mixbench.datasets": 1,
    "mixbench.bench.evaluators": 1,
    "mixbench.bench": 2,
    "mixbench.cli": 3,
    "mixbench.leaderboard": 3,
    "mixbench.__main__": 3,
    "mixbench": 3,
}
LAYER_NAMES = ("core", "components", "runner", "apps")


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([PACKAGE, *parts])] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()

    def module_of(dotted: str) -> str | None:
        """``dotted`` or its closest enclosing module of the package."""
        while dotted:
            if dotted in modules:
                return dotted
            dotted = dotted.rpartition(".")[0]
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = module_of(alias.name)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base.pop()
                base = base[: len(base) - (node.level - 1)]
                dotted = ".".join(base + ([node.module] if node.module else []))
            else:
                dotted = node.module or ""
            if not (dotted == PACKAGE or dotted.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                sub = f"{dotted}.{alias.name}"
                target = sub if sub in modules else module_of(dotted)
                if target:
                    found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            out.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(name: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"module {name} is in no layer; add it to LAYERS")


def test_the_graph_is_read():
    graph = _graph()
    assert "mixbench.cli" in graph and "mixbench.bench.engine" in graph
    assert "mixbench.config" in graph["mixbench.cli"]
    assert all(_layer(name) in range(len(LAYER_NAMES)) for name in graph)


def test_no_import_cycles():
    graph = _graph()
    cycles = [part for part in _components(graph) if len(part) > 1]
    cycles += [[name] for name, targets in graph.items() if name in targets]
    assert not cycles, "import cycles:\n" + "\n".join(f"  {' <-> '.join(part)}" for part in cycles)


def test_no_module_imports_a_higher_layer():
    graph = _graph()
    upward = sorted(
        (name, target)
        for name, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(name)
    )
    assert not upward, "imports of a higher layer:\n" + "\n".join(
        f"  {a} ({LAYER_NAMES[_layer(a)]}) -> {b} ({LAYER_NAMES[_layer(b)]})" for a, b in upward
    )
