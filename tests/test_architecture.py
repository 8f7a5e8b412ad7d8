"""Import arrows between the packages flow one way (issue 18, docs/architecture.md).

Read from the source with ``ast`` (nothing is imported): every ``import`` and ``from ... import``
in the library, at module level or inside a function (a lazy import is an arrow all the same),
is mapped to the package it comes from and the package it names. The test fails when

* ``callbacks/`` or ``datamodules/`` import anything from ``unlearning/`` (they are reusable
  Lightning pieces: the callbacks work on any LightningModule, the datamodule on any dataset);
* any cycle exists between the packages below (a cycle means neither side can be read, tested
  or changed without the other);
* library code (anything but ``bench/`` itself) imports ``bench/``.

The failure message prints the whole package graph with, for every arrow, the modules and lines
that draw it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the nodes of the graph; a module belongs to the longest one that prefixes its dotted name,
#: else (a module directly in ``unlearning/``, e.g. ``unlearning.models``) it is its own node
PACKAGES = (
    "unlearning.pipeline",
    "unlearning.evaluation",
    "unlearning.memorization",
    "unlearning.outputs",
    "unlearning.report",
    "unlearning.tuning",
    "unlearning.config",
    "unlearning.methods",
    "unlearning.theory",
    "callbacks",
    "datamodules",
    "bench",
)
SOURCES = ("unlearning", "callbacks", "datamodules", "bench", "train.py")
#: packages that must not import ``unlearning`` (nor anything in it)
STANDALONE = ("callbacks", "datamodules")

#: Arrows allowed to close a cycle (none: the package graph is acyclic).
ALLOWED_EDGES: set[tuple[str, str]] = set()

Edge = tuple[str, str]


def node_of(module: str) -> str | None:
    """The graph node of a dotted module name, or ``None`` for a third-party module."""
    for package in sorted(PACKAGES, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    if module == "train":
        return "train"
    if module == "unlearning":
        return "unlearning"
    if module.startswith("unlearning."):
        return ".".join(module.split(".")[:2])  # unlearning.models, unlearning.modes
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, name: str, is_package: bool = False) -> list[tuple[str, int]]:
    """Every module the code ``source`` of module ``name`` imports (absolute dotted names,
    relative imports resolved), with the line; ``from package import name`` counts as
    ``package.name`` (a submodule or a name of the package: either way an arrow into it)."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def library_files() -> list[Path]:
    files = []
    for source in SOURCES:
        path = ROOT / source
        files += [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
    return files


def package_graph() -> dict[Edge, list[str]]:
    """``{(importer, imported): ["module:line", ...]}`` between different nodes."""
    edges: dict[Edge, list[str]] = defaultdict(list)
    for path in library_files():
        importer = node_of(module_name(path))
        assert importer is not None, path
        found = imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")
        for imported, line in found:
            target = node_of(imported)
            if target is not None and target != importer:
                where = f"{module_name(path)}:{line}"
                if where not in edges[(importer, target)]:  # one entry per import statement
                    edges[(importer, target)].append(where)
    return dict(edges)


def cycles(edges: set[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
        graph[b]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def describe(edges: dict[Edge, list[str]]) -> str:
    """The package graph, one arrow a line with the imports that draw it."""
    lines = ["package graph (importer -> imported: where):"]
    for (a, b), where in sorted(edges.items()):
        shown = ", ".join(where[:4]) + (f", ... ({len(where)} imports)" if len(where) > 4 else "")
        lines.append(f"  {a} -> {b}: {shown}")
    return "\n".join(lines)


def test_callbacks_and_datamodules_import_nothing_from_unlearning() -> None:
    edges = package_graph()
    bad = {
        edge: where
        for edge, where in edges.items()
        if edge[0] in STANDALONE and (edge[1] == "unlearning" or edge[1].startswith("unlearning."))
    }
    assert not bad, f"{sorted(bad)} import unlearning/\n{describe(edges)}"


def test_no_cycle_between_packages() -> None:
    edges = package_graph()
    found = cycles(set(edges) - ALLOWED_EDGES)
    assert not found, f"import cycles {found}\n{describe(edges)}"


def test_the_allowed_edges_still_exist() -> None:
    """An allowance whose edge is gone must be removed (it would hide a future cycle)."""
    stale = ALLOWED_EDGES - set(package_graph())
    assert not stale, f"remove {sorted(stale)} from ALLOWED_EDGES"


def test_library_code_does_not_import_bench() -> None:
    edges = package_graph()
    bad = {edge: where for edge, where in edges.items() if edge[1] == "bench"}
    assert not bad, f"library code imports bench/: {bad}\n{describe(edges)}"


def test_the_scanner_sees_lazy_relative_and_from_imports_and_finds_cycles() -> None:
    source = (
        "import torch\n"
        "from . import cli\n"
        "from ..outputs.results import write_results\n"
        "def f():\n"
        "    import unlearning.models\n"
    )
    found = imported_modules(source, "unlearning.report.tables")
    assert found == [
        ("torch", 1),
        ("unlearning.report.cli", 2),
        ("unlearning.outputs.results.write_results", 3),
        ("unlearning.models", 5),
    ]
    assert [node_of(m) for m, _ in found] == [
        None,
        "unlearning.report",
        "unlearning.outputs",
        "unlearning.models",
    ]
    assert imported_modules("from .base import X\n", "unlearning.methods", is_package=True) == [
        ("unlearning.methods.base.X", 1)
    ]
    assert node_of("bench.common") == "bench" and node_of("unlearning") == "unlearning"
    assert cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert cycles({("a", "b"), ("b", "c")}) == []
