"""The package's files import each other without cycles (issue 19: "no file-level import cycle").

The graph is built statically with :mod:`ast` from every ``.py`` file of ``pytest_qrel``: a node is a
file (a package is its ``__init__.py``), an edge ``a -> b`` is an ``import`` / ``from ... import``
in ``a`` that names ``b`` (``from . import x`` names the submodule ``x`` when there is one, else the
package). What counts:

- imports at module level, in class bodies and under ``if`` / ``try`` / ``with``: they run when the
  file is imported;
- **imports inside functions count too.** A lazy import keeps torch or an optional runtime off the
  import path, and it cannot fail with a half-initialised module, but the two files still depend
  on each other: neither can be read, tested or moved alone. The cycles issue 19 lists
  (``data/`` and ``models/`` through ``_builtin``, ``fakequant`` <-> ``options``) were lazy ones.
- not counted: imports under ``if TYPE_CHECKING:`` (annotations only; every module uses
  ``from __future__ import annotations``), and the implicit import of a package's ``__init__``
  before its submodules (that is how registries fill themselves: ``data/__init__`` imports
  ``_builtin``, which imports the sources, which import the leaf ``data/base``).

A cycle fails the test with its path; there is no allow-list (the last two cycles, metrics <->
runtimes.checks and metrics <-> conventions, were broken by moving the shared piece to a leaf:
the runtime metrics' table into metrics.py, the input checks into metric_inputs.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_qrel"

# ------------------------------------------------------------------------------------- the graph


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (a package directory)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of the file, at any depth, except under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit_stmt(other)
            else:
                visit(child)

    def visit_stmt(stmt: ast.stmt) -> None:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            found.append(stmt)
        else:
            visit(stmt)

    visit(tree)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: {modules of the same package it imports}}`` (rules: module docstring)."""
    modules = _modules(root)
    top = root.name
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                if node.level:
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of an attribute path
                    target = target.rpartition(".")[0]
                if target.split(".")[0] == top and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one module
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the alphabetically first module of ``component`` (breadth-first)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in parents:
                    parents[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle in component {sorted(component)}")  # pragma: no cover


# ------------------------------------------------------------------------------------- the tests


def test_no_import_cycle_between_files() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 100 and "pytest_qrel.metrics" in graph  # the whole package, down to its sub-packages
    found = [" -> ".join(c) for c in cycles(graph)]
    assert not found, "import cycles between files of pytest_qrel (break each by moving the shared piece " \
        "to a leaf module):\n" + "\n".join(found)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_graph_counts_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from . import a\n",
        "pkg/a.py": "from .b import f\n",
        "pkg/b.py": "def f():\n    from .a import g\n",          # a lazy import back: a cycle
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import X\n",
        "pkg/d.py": "from .c import Y\n",                           # c -> d only for annotations: no cycle
        "pkg/sub/__init__.py": "",
        "pkg/sub/e.py": "from .. import b\nimport pkg.sub.f\n",
        "pkg/sub/f.py": "class K:\n    from ..sub import e\n",      # a class-body import back: a cycle
    })
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.c"] == set() and graph["pkg.d"] == {"pkg.c"}
    assert graph["pkg.sub.e"] == {"pkg.b", "pkg.sub.f"} and graph["pkg.sub.f"] == {"pkg.sub.e"}
    assert sorted(cycles(graph)) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.sub.e", "pkg.sub.f", "pkg.sub.e"]]


@pytest.mark.parametrize("edges, expected", [
    ({"x": {"y"}, "y": {"z"}, "z": {"x"}}, [["x", "y", "z", "x"]]),
    ({"x": {"y"}, "y": set()}, []),
    ({"x": {"y", "z"}, "y": {"x"}, "z": {"y"}}, [["x", "y", "x"]]),
])
def test_cycles_reports_a_shortest_path(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(edges) == expected
