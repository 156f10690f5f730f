"""Imports only go down the layers (README, "How it fits together"): checked on every module's source.

A package may import itself and the packages listed for it here, nothing else of the project:
the launcher on top; the deployer, the gateway and the benchmarks below it, the gateway and the
deployer never importing the training side (torch) or each other; ``tritonio`` and ``modelspec``
at the bottom, importing nothing of the project.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("modelspec", "tritonio", "servers", "registry", "deployer", "gateway", "benchmarks", "modelops")
ALLOWED: dict[str, frozenset[str]] = {
    "modelspec": frozenset(),
    "tritonio": frozenset(),
    "servers": frozenset({"modelspec"}),
    "deployer": frozenset({"modelspec", "tritonio"}),
    "gateway": frozenset({"modelspec", "tritonio"}),
    # registration writes with the same MLflow / repository settings the deployer reads
    "registry": frozenset({"modelspec", "deployer.settings"}),
    "benchmarks": frozenset({"modelspec", "tritonio", "servers", "registry"}),
    "modelops": frozenset(PACKAGES) - {"modelops"},
    "triton_backend": frozenset(),  # copied alone into Triton's backend folder
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _allowed(name: str, allowed: frozenset[str]) -> bool:
    return any(name == a or name.startswith(f"{a}.") for a in allowed)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    project = set(ALLOWED)
    wrong: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = sorted(
            name
            for name in _imports(path)
            if name.split(".")[0] in project and name.split(".")[0] != package and not _allowed(name, ALLOWED[package])
        )
        if bad:
            wrong[str(path.relative_to(ROOT))] = bad
    assert wrong == {}, f"imports that run upward or sideways: {wrong}"


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from modelops.settings import StackSettings\nimport gateway.app\n")
    assert {n for n in _imports(module) if not _allowed(n, ALLOWED["benchmarks"])} == {
        "modelops.settings",
        "gateway.app",
    }
