"""The layers hold: no import cycle among fedmq's modules.

A cycle is two modules that each need the other: neither can be understood, tested or replaced
alone, and one of the two imports has to hide inside a function to work at all. So the graph here
counts every import statement, those inside functions too, read with ``ast`` from the source (no
module is imported). Imports under ``if TYPE_CHECKING:`` are left out: they never run, and they are
how a lazy package (``lazy.py``) names for type checkers what it loads on demand.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root is the fedmq package
NOT_MODULES = {"tests", "benchmarks", "examples", "deploy", "docs", "build", "dist"}
# Cycles being removed on another branch (issue 14: the task plug-ins register themselves, branch
# `tasks`). Each must still exist: the test fails once it is gone, so the entry is dropped at the merge.
KNOWN_CYCLES = [["fedmq.edge_client.classification", "fedmq.edge_client.detection", "fedmq.edge_client.task"]]


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``fedmq.aggregator`` for aggregator/__init__.py)."""
    found: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0] in NOT_MODULES or parts[0].startswith(".") or parts[0].endswith(".egg-info") or parts == ("setup.py",):
            continue
        names = list(parts[:-1]) + ([] if path.name == "__init__.py" else [path.stem])
        found[".".join(["fedmq", *names])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, at any depth, except those under ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the fedmq modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                # ``from pkg import mod`` imports the submodule; ``from mod import name`` the module.
                targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in modules else base_name
                           for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_graph_sees_the_package_and_imports_inside_functions() -> None:
    """The check below is only worth something if the graph is whole: it names the modules and follows
    relative imports, imports of submodules by ``from . import``, and imports inside functions."""
    graph = import_graph()
    assert {"fedmq.cli", "fedmq.aggregator.federation", "fedmq.schemas.messages", "fedmq.broker.connection"} <= set(graph)
    assert "fedmq.errors" in graph["fedmq.aggregator.federation"]
    assert "fedmq.commands.demo" in graph["fedmq.cli"], "cli imports each command's module inside its function"
    assert "fedmq.broker.keys" in graph["fedmq.aggregator.federation"], "imported inside _load_public_keys"


def test_the_tarjan_search_finds_a_cycle_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_fedmq_imports_itself_through_others() -> None:
    found = cycles(import_graph())
    new = [c for c in found if c not in KNOWN_CYCLES]
    assert not new, "import cycles (move what both need into a third module, or register a plug-in):\n" + "\n".join(
        " <-> ".join(c) for c in new)
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"
