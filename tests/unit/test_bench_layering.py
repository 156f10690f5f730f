"""``benchmarks`` sits below the launcher: no module of it imports ``modelops``."""

from __future__ import annotations

import ast
from pathlib import Path

import benchmarks

BENCHMARKS = Path(benchmarks.__file__).resolve().parent


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_benchmarks_module_imports_the_launcher() -> None:
    upward = {
        str(path.relative_to(BENCHMARKS)): sorted(n for n in _imported(path) if n.split(".")[0] == "modelops")
        for path in sorted(BENCHMARKS.rglob("*.py"))
    }
    assert {k: v for k, v in upward.items() if v} == {}
