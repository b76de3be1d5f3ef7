"""hps's import graph: one way, no cycles, and the foundations import nothing above them.

Read from the source (every ``import``, including those under ``TYPE_CHECKING`` and inside
functions), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.server import REPO

FOUNDATIONS = {"config", "catalog", "guard", "urls", "negotiate", "head", "headers",
               "atomic", "owned", "work", "state", "replies", "canned", "limits", "memory"}
"""What the request path is built on: none of these may import a module that serves."""


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hps"):
            found |= ({f"hps.{alias.name}" for alias in node.names} if node.module == "hps"
                      else {node.module})
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("hps")}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in (REPO / "hps").rglob("*.py")}
    return {name: imports(path) & modules.keys() - {name} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert len(graph()) > 30
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_foundations_import_only_foundations() -> None:
    edges = graph()
    allowed = {f"hps.{name}" for name in FOUNDATIONS} | {"hps", "hps._twisted", "hps.metrics"}
    reaching_up = {name: sorted(target for target in edges[name]
                                if target not in allowed and not target.startswith("hps.pull"))
                   for name in allowed if name in edges}
    assert {name: up for name, up in reaching_up.items() if up} == {}
