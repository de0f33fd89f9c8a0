"""The house's rules, read from the source (ast, nothing imported): no import circle, and no arrow from a
lower layer (storage/, config/) up to the worker, the HTTP edge or the CLI.

Every import counts, the ones inside functions too: a late import hides a circle from Python, not from
whoever has to understand the code. The text listing of the graph (the issue 17 acceptance):

    $ .venv/bin/python -m tests.test_architecture
    leadsync.cli -> leadsync.config, leadsync.logs, ...
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# pyproject.toml's package-dir: the top-level folders install as sub-packages of `leadsync`.
PACKAGES = {
    "leadsync": "leadsync",
    "forms": "leadsync.forms",
    "worker": "leadsync.worker",
    "storage": "leadsync.storage",
    "config": "leadsync.config",
}
LOWER = ("leadsync.storage", "leadsync.config")
HIGHER = ("leadsync.worker", "leadsync.forms", "leadsync.cli", "leadsync.__main__")


def _within(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (migrations are scripts Alembic loads)."""
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            parts = [part for part in path.relative_to(root / folder).with_suffix("").parts if part != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (`from a import b` is an arrow to a.b when b is a module)."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in known)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in known:
                        targets.add(f"{node.module}.{alias.name}")
                    elif node.module in known:
                        targets.add(node.module)
        targets.discard(name)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
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
                    found.append(sorted(component))
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Lower-layer modules that reach the worker, the edge or the CLI, directly or through another module."""
    return [
        f"{name} -> {', '.join(sorted(up))}"
        for name in sorted(graph)
        if _within(name, LOWER) and (up := {t for t in reachable(graph, name) if _within(t, HIGHER)})
    ]


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package (pyproject's package-dir), not an empty folder
    assert circles(graph) == []


def test_storage_and_config_import_nothing_above_them() -> None:
    assert upward_arrows(import_graph()) == []


def test_the_checks_see_a_circle_and_an_upward_arrow(tmp_path: Path) -> None:
    """The checks themselves: a made-up package with one circle and one arrow from storage up to the worker."""
    for folder in PACKAGES:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "worker" / "a.py").write_text("from leadsync.worker import b\n")
    (tmp_path / "worker" / "b.py").write_text("def f():\n    from leadsync.worker.a import x\n")
    (tmp_path / "storage" / "db.py").write_text("from leadsync.config import settings\n")
    (tmp_path / "config" / "settings.py").write_text("import leadsync.worker.a\n")
    graph = import_graph(tmp_path)
    assert circles(graph) == [["leadsync.worker.a", "leadsync.worker.b"]]
    assert upward_arrows(graph) == [
        "leadsync.config.settings -> leadsync.worker.a, leadsync.worker.b",
        "leadsync.storage.db -> leadsync.worker.a, leadsync.worker.b",
    ]


if __name__ == "__main__":
    for module, targets in sorted(import_graph().items()):
        print(f"{module} -> {', '.join(sorted(targets)) or '(nothing of leadsync)'}")
