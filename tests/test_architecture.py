"""The package's structure: no import circle, and run keys that stay put when the code is reorganised."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import replicate
from replicate.experiments.runs import requests_for
from replicate.experiments.sweep import load_papers

PACKAGE = Path(replicate.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every replicate module ``name`` imports, at module level or inside functions (a lazy import that
    closes a circle is still a circle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                target = f"{module}.{alias.name}"
                found.add(target if target in modules else module)
    return {m for m in found if m in modules and m != name}


def import_cycles() -> list[list[str]]:
    """The strongly connected components of more than one module of the package's import graph."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_package_has_no_import_circle():
    assert import_cycles() == []


def test_the_cycle_finder_finds_a_planted_circle(tmp_path, monkeypatch):
    package = tmp_path / "replicate"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .a import g\n")
    (package / "c.py").write_text("from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert import_cycles() == [["replicate.a", "replicate.b"]]


# Run keys computed before the package's reorganisation (commit 62582e9) and, for the proxy profile, of
# committed records: a key that moves orphans its record. The proxy's 2400-iteration records (its first
# schedule) keep their keys as the schedule table's 2400-iteration rows. The smoke keys moved on purpose when the
# smoke schedule went from 100 to 50 iterations, and again to 25 (smoke records are never committed).
PINNED_KEYS = {
    ("smoke", "retinanet_conf:table1", "RetinaNet", 0): "7c100ed0a3fc",
    ("smoke", "mod:table2", "MOD", 0): "7834243fa8c1",
    ("synthetic", "mod:table1", "Cls-loss", 0): "650feaef7e0d",
    ("synthetic", "retinanet_conf:table4", "cls (obj>0.5)", 1): "0efbf45d1cf9",
    ("coco", "mod:table2", "MOD", 1): "d9558a1d869a",
    ("coco", "retinanet_conf:code_variants", "RetinaNet-Conf (released code)", 0): "3ccc46015298",
    ("proxy", "benchmark:ranking", "RetinaNet", 0): "5c3db123012d",
    ("proxy", "benchmark:schedule", "RetinaNet, 1200 iterations", 0): "57efa6ca4de5",
    ("proxy", "benchmark:schedule", "RetinaNet, 2400 iterations", 0): "308609856249",
    ("proxy", "benchmark:schedule", "ATSS, 2400 iterations", 1): "ee0eab3a5ad2",
}


@pytest.mark.parametrize(("profile", "table", "row", "seed"), sorted(PINNED_KEYS))
def test_run_keys_are_pinned(profile, table, row, seed):
    paper, _, table_id = table.partition(":")
    spec = load_papers()[paper][table_id]
    keys = {(r.row_label, r.seed): r.key for r in requests_for(spec, profile, seed + 1)}
    assert keys[row, seed] == PINNED_KEYS[profile, table, row, seed]
