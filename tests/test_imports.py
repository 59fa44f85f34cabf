"""The import graph of bot/ and pipeline/ has no cycles, read from the source (no module is run).

Every import counts: at the top, inside functions (lazy imports only hide a cycle until the
day the order changes) and under ``if TYPE_CHECKING:`` (a cycle there still means two modules
that each need the other). The one edge not drawn is Python's implicit import of a package
before its submodules: ``bot.store`` imports its parts, and they never import ``bot.store``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "pipeline")
# The entry points build the bot; everything else gets it through bot.protocols.
MAY_IMPORT_APP = {"bot.__main__", "bot.preview"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(module: str, path: Path) -> set[str]:
    """The modules of bot/ and pipeline/ that ``module`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from bot.store import jobs`` imports a module; ``from bot.store import Store``
            # imports from one.
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    edges = set()
    for name in names:
        # ``import pipeline.shapes.model`` needs that module; an unknown tail is an attribute.
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            edges.add(name)
    return edges


GRAPH = {module: _imported(module, path) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_from_the_source() -> None:
    # A reader that found nothing would pass the tests below: check it sees known imports.
    assert {"bot.jobs", "bot.views", "bot.store"} <= GRAPH["bot.app"]
    assert "bot.protocols" in GRAPH["bot.views"]  # under TYPE_CHECKING
    assert "pipeline.shapes.model" in GRAPH["pipeline.tiny"]  # inside a function
    assert {"bot.store.files", "bot.store.base"} & GRAPH["bot.store.jobs"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_of_bot_or_pipeline_imports_itself_back() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_only_the_entry_points_import_the_app() -> None:
    importers = {module for module, targets in GRAPH.items() if "bot.app" in targets}
    assert importers <= MAY_IMPORT_APP, sorted(importers - MAY_IMPORT_APP)


def test_pipeline_never_imports_the_bot() -> None:
    for module, targets in GRAPH.items():
        if module.startswith("pipeline"):
            assert not any(t.startswith("bot") for t in targets), module
