"""No import cycles inside `engine` (the compiled modules' Python imports included).

Imports under `if TYPE_CHECKING:` are left out: they never run.  A module
imported inside a function counts (it is a cycle postponed, not avoided).
"""

from __future__ import annotations

import ast

from harness import ROOT


def _imports(tree: ast.AST, modules: set[str], types: bool = False) -> set[str]:
    """The modules of `modules` that `tree` imports when it runs (with
    `types`, also those it imports for type checking only)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if not types and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    # `from engine.protocol import errors` imports the module
                    # engine.protocol.errors; `from engine import X`, the package.
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(list(getattr(tree, "body", [])))
    return found & modules


def module_graph(types: bool = False) -> dict[str, set[str]]:
    sources: dict[str, str] = {}
    for path in (ROOT / "engine").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        sources[name.removesuffix(".__init__")] = path.read_text()
    for path in (ROOT / "src_pyx").rglob("*.pyx"):
        # A compiled module's Python imports (its cimports are compile-time).
        rel = path.relative_to(ROOT / "src_pyx").with_suffix("")
        lines = [
            line
            for line in path.read_text().splitlines()
            if line.startswith(("import ", "from ")) and " cimport " not in line
        ]
        sources[".".join(("engine", *rel.parts))] = "\n".join(lines)
    if types:  # the stubs of compiled modules say what they use for types
        for path in (ROOT / "engine").rglob("*.pyi"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            sources[name] = sources.get(name, "") + "\n" + path.read_text()
    modules = set(sources)
    return {
        name: _imports(ast.parse(source), modules, types) - {name}
        for name, source in sources.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
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
            strong(v)
    return found


def test_the_checker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_engine() -> None:
    graph = module_graph()
    assert "engine.protocol.core" in graph and "engine.protocol._sessions" in graph
    assert cycles(graph) == []


TRANSPORTS = {
    "engine.transport.http",
    "engine.transport._http",
    "engine.transport.websocket",
    "engine.transport.endpoint",
}
CORE = {"engine.protocol.core", "engine.protocol._sessions", "engine.protocol.session"}


def test_layers_have_no_back_edges_even_for_types() -> None:
    """Transports do not know the server (they get an Endpoint); the core
    does not know the transports (it hands events to an EventSink)."""
    graph = module_graph(types=True)
    for name in TRANSPORTS:
        assert "engine.server" not in graph[name], name
    for name in CORE:
        assert not graph[name] & TRANSPORTS, (name, graph[name] & TRANSPORTS)
