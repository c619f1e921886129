"""The package's structure holds: no import cycles (function-level imports included), thin entry points,
a docstring opening every file. The layer contracts themselves run as `lint-imports` (pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vit_mnist"
ENTRY_POINTS = ("train", "evaluate", "robustness", "predict", "export", "serve", "bench", "sweep_report")
MAX_ENTRY_LINES = 80  # an entry is the Hydra main and one call into the library: about 40 lines


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import each other in a cycle (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1 or node in edges.get(node, ()):
                    groups.append(group)
    return groups


def test_cycle_finder_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_package() -> None:
    graph = grimp.build_graph("vit_mnist")  # every import statement, those inside functions included
    modules = {m for m in graph.modules if m.startswith("vit_mnist")}
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in modules} for m in modules}
    assert strongly_connected(edges) == []


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_are_thin(name: str) -> None:
    lines = (PACKAGE / f"{name}.py").read_text().splitlines()
    assert len(lines) <= MAX_ENTRY_LINES, f"vit_mnist/{name}.py has {len(lines)} lines: move the work into the library"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_file_opens_with_a_docstring(path: Path) -> None:
    tree = ast.parse(path.read_text())
    docstring = ast.get_docstring(tree, clean=False)
    assert docstring and docstring.strip(), f"{path} does not start with a docstring"
