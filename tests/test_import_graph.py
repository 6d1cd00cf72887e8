"""No import circles between mamba_clip's modules (issue 18), counting imports inside functions too:
a static check over the source, so a circle cannot come back unnoticed; plus each module of a former
circle imported first in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

PKG = Path(__file__).resolve().parents[1] / "mamba_clip"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def import_graph() -> Dict[str, Set[str]]:
    """module -> mamba_clip modules it imports anywhere in its body (package ``__init__`` files are
    left out as targets: they re-export, and ``from .pkg import mod`` counts as importing ``mod``)."""
    mods = _modules()
    graph: Dict[str, Set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        deps: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - (node.level - 1)]
                    mod = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
            for t in targets:
                if t in mods and mods[t].name != "__init__.py" and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    cycles, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return cycles


def test_no_import_circles():
    graph = import_graph()
    assert "mamba_clip.fileio" in graph["mamba_clip.eval.zeroshot.table"]  # the checker sees lazy imports
    cycles = find_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_checker_finds_a_circle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.slow
@pytest.mark.parametrize("module", ["mamba_clip.eval.zeroshot.table", "mamba_clip.eval.zeroshot.suite",
                                    "mamba_clip.ops.scan_triton", "mamba_clip.ops.selective_scan"])
def test_former_circle_members_import_first(module):
    code = f"import {module}, sys; assert '{module}' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
