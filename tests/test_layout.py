"""The layout's boundaries: what imports what, and what importing does to a process."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
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
# the rules a run applies: pure, so neither the platform's client nor the state
RULE_MODULES = ("tasks.reconcile", "tasks.delta", "tasks.guards")
RULES_MUST_NOT_IMPORT = ("tasks.lightspeed", "tasks.state")


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


def product_modules() -> dict[str, Path]:
    """Every module of flows/ and tasks/ by dotted name (a package by its own name)."""
    modules = {}
    for package in ("flows", "tasks"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The ids of nodes under an `if TYPE_CHECKING:` block, which never run."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return skipped


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the product modules it imports, deferred imports in functions included.

    Importing a module first imports its packages, so each module also depends on its parent
    package's __init__; `from package import name` depends on the submodule when `name` is one.
    """

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_only(tree)
        targets: set[str | None] = set()
        parent = name.rpartition(".")[0]
        if (parent in modules and path.name != "__init__.py") or (
            path.name == "__init__.py" and parent in modules
        ):
            targets.add(parent)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else known(node.module))
        graph[name] = {target for target in targets if target and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_between_product_modules():
    assert cycles(import_graph(product_modules())) == []


def test_the_circle_check_finds_a_deferred_circle():
    """The check itself: two modules that import each other inside functions are a circle."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(graph) == [["a", "b"]]


def test_the_rules_import_neither_the_platform_nor_the_state():
    graph = import_graph(product_modules())
    offending = {
        rule: sorted(t for t in graph[rule] if t.startswith(RULES_MUST_NOT_IMPORT))
        for rule in RULE_MODULES
    }
    assert {rule: bad for rule, bad in offending.items() if bad} == {}


PROCESS_PROBE = """
import json, logging, os, sys
import psutil
import prefect.flow_engine

def observe():
    return {
        "run_log_filters": sum(len(logging.getLogger(n).filters)
                               for n in ("prefect.flow_runs", "prefect.task_runs")),
        "heartbeats_patched": hasattr(prefect.flow_engine._send_heartbeats,
                                      "_inventory_sync_original"),
        "children": len(psutil.Process().children(recursive=True)),
        "ge_imported": "great_expectations" in sys.modules,
    }

before = observe()
import importlib, pkgutil
import flows, tasks
for package in (flows, tasks):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not module.name.endswith("__main__") and module.name != "flows.flow_run_process":
            importlib.import_module(module.name)
imported = observe()
from flows.process import prepare_process
prepare_process()
print(json.dumps({"before": before, "imported": imported, "prepared": observe()}))
"""


@pytest.mark.slow  # a fresh interpreter imports every module
def test_importing_the_product_changes_nothing_until_prepare_process():
    """Every module of flows/ and tasks/ imported, in a worker's flow-run environment too."""
    environment = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    environment["PREFECT__FLOW_RUN_ID"] = "00000000-0000-0000-0000-000000000000"
    done = subprocess.run(
        [sys.executable, "-c", PROCESS_PROBE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=180,
        check=True,
    )
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["imported"] == seen["before"]
    assert seen["prepared"]["run_log_filters"] == seen["before"]["run_log_filters"] + 2
    assert seen["prepared"]["heartbeats_patched"] is True
    assert seen["before"]["heartbeats_patched"] is False


MIRRORED = ("flows", "tasks", "sandbox", "devstack", "benchmarks")


def test_fast_tests_mirror_the_code():
    """tests/<package>/test_<module>.py tests <package>/<module>; journeys live in tests/e2e/."""
    orphans = []
    for package in MIRRORED:
        for test in sorted((ROOT / "tests" / package).rglob("test_*.py")):
            folder = ROOT / test.parent.relative_to(ROOT / "tests")
            name = test.stem.removeprefix("test_")
            if not any(
                p.exists() for p in (folder / f"{name}.py", folder / name, folder / f"{name}.sh")
            ):
                orphans.append(str(test.relative_to(ROOT)))
    assert orphans == []
