"""The layout's boundaries: the product imports no dev tooling, the sandbox imports no product."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]
# package -> packages it must never import
FORBIDDEN = {
    "flows": {"sandbox", "devstack", "benchmarks", "tests"},
    "tasks": {"sandbox", "devstack", "benchmarks", "tests", "flows"},
    "sandbox": {"flows", "tasks", "devstack", "benchmarks", "tests"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level package of every import in a module, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_it_must_not(package):
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: bad for path, bad in offending.items() if bad} == {}
