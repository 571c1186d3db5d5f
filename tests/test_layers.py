"""The package's imports point one way: no import cycles, and no module imports a higher layer.

The import graph is read from the source with :mod:`ast` (nothing is imported): every
``import`` and ``from ... import`` counts, relative ones and those inside functions included,
and ``from package import name`` counts as an import of ``package.name`` when that is a module.

Layers, lowest first: core (errors, registry, seeding, file I/O, names, plug-in loading, typed
configuration, version), components (methods, models, data sets, evaluators), the runner in
three steps (``bench.train``: one cell's training; ``bench.run``: the matrix, the store,
evaluation after training, launching; ``bench.tuning`` and ``bench.perf``: built on both), and
apps (the command line and its subcommands, the leaderboard, ``show``, the package itself and
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
    "mixbench.names": 0,
    "mixbench.methods": 1,
    "mixbench.models": 1,
    "mixbench.datasets": 1,
    "mixbench.bench.evaluators": 1,
    "mixbench.bench": 2,
    "mixbench.bench.train": 2,
    "mixbench.bench.run": 3,
    "mixbench.bench.tuning": 4,
    "mixbench.bench.perf": 4,
    "mixbench.cli": 5,
    "mixbench.commands": 5,
    "mixbench.leaderboard": 5,
    "mixbench.show": 5,
    "mixbench.__main__": 5,
    "mixbench": 5,
}
LAYER_NAMES = ("core", "components", "runner: training", "runner: matrix", "runner: tools", "apps")


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
    assert "mixbench.cli" in graph and "mixbench.bench.train.engine" in graph
    assert "mixbench.commands" in graph["mixbench.cli"]
    assert "mixbench.bench.run.matrix" in graph["mixbench.commands.worker"]  # inside a function
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


def test_every_subcommand_has_its_module():
    """The parser's table names one module per subcommand, each with add_arguments and run."""
    import importlib

    from mixbench.cli import make_parser
    from mixbench.commands import COMMANDS

    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names))
    for command in COMMANDS:
        module = importlib.import_module(command.module_name)
        assert callable(module.add_arguments) and callable(module.run), command.name
    choices = make_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(choices) == names
