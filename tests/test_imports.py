"""The package's import structure: training and tasks stand apart from the engine."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "parathinker"


def _modules(package: str) -> list[str]:
    """Every module of a package of ``src/parathinker``, subpackages included."""
    root = SRC.parent
    files = sorted(SRC.joinpath(*package.split(".")[1:]).rglob("*.py"))
    names = [".".join(f.relative_to(root).with_suffix("").parts) for f in files if f.stem != "__main__"]
    return [n.removesuffix(".__init__") for n in names]


@pytest.mark.parametrize("package", ["parathinker.train", "parathinker.tasks"])
def test_train_and_tasks_do_not_load_the_engine(package):
    """Every module of train/ and tasks/ imports without loading ``parathinker.engine`` (a fresh interpreter)."""
    mods = _modules(package)
    assert len(mods) > 3
    code = (
        "import importlib, json, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.startswith('parathinker.engine'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions (``ast``); imports
    under ``if TYPE_CHECKING:`` are annotations only, never run, and are not counted."""
    root = SRC.parent
    files = {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f for f in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                # ``from pkg import name``: the submodule pkg.name when there is one, else pkg itself
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names]
            else:
                continue
            graph[mod].update(t for t in targets if t in files and t != mod)
    return graph


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_import_graph_has_no_cycle():
    """No module of the package imports itself back through others, at module level or inside a function."""
    graph = _import_graph()
    assert "parathinker.engine.plan" in graph["parathinker.engine.runner"]  # the graph is seen
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
