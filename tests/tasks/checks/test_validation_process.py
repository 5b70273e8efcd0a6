"""The Great Expectations side process: the same verdicts as in this process, and never needed.

Real child processes and real GX. A child that is killed, stopped or orphaned leaves nothing
behind, and a suite asked of a dead child is answered here instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from tasks.checks import gx, suites, validation_process
from tasks.checks.gx import SuiteError, validate_here
from tasks.checks.suites import validate_distinct
from tasks.checks.validation_process import ProcessGone, ValidationProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
MODULE = "tasks.checks.validation_process"


def warehouse_rows() -> pl.DataFrame:
    """Rows the warehouse-rows suite flags for four different reasons, and two it passes."""
    return pl.DataFrame(
        {
            "sku_is_present": [True, False, True, True, True, True],
            "quantity_is_present": [True, True, False, True, True, True],
            "quantity_is_integer": [True, True, True, False, True, True],
            "quantity_number": [3.0, 1.0, None, 2.5, -4.0, 7.0],
            "sku_in_catalog": [True, True, True, True, True, False],
        }
    ).with_row_index("row_id")


def payload() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id_is_present": [True, True, False],
            "id_in_catalog": [True, False, True],
            "id_is_unique": [True, True, True],
            "quantity": [5, 0, 2],
        }
    ).with_row_index("row_id")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited: only its parent has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def side_process():
    process = ValidationProcess()
    yield process
    process.stop()


@pytest.fixture
def as_the_runs_side_process(side_process, monkeypatch):
    """`validate` asks this child, as it does in a CLI run or a worker's flow-run process."""
    monkeypatch.setattr(validation_process, "_process", side_process)
    return side_process


def test_the_side_process_gives_the_verdicts_this_process_gives(side_process):
    floats = payload().with_columns(pl.col("quantity").cast(pl.Float64))  # the type rule fails
    for frame, suite in (
        (warehouse_rows(), "warehouse_rows"),
        (payload(), "payload"),
        (floats, "payload"),
    ):
        there = side_process.validate(frame, suite)
        here = validate_here(frame, suite)
        assert there == here
        assert any(not outcome.success for outcome in there)  # the frames do fail
    flagged = {
        o.reason: o.row_ids for o in side_process.validate(warehouse_rows(), "warehouse_rows")
    }
    assert flagged["empty SKU"] == [1]
    assert flagged["missing quantity"] == [2]
    assert flagged["quantity is not an integer"] == [3]
    assert flagged["negative quantity"] == [4]
    assert flagged["unknown SKU"] == [5]


def test_the_side_process_defers_what_gx_imports_for_expectations_it_never_runs():
    """scipy.stats and altair load on first use in the child (1.2 s of its import CPU)."""
    script = textwrap.dedent(
        """
        import importlib.util, sys
        from tasks.checks import gx, validation_process
        sys.meta_path.insert(0, validation_process.LazyImports(validation_process.LAZY_PACKAGES))
        gx.import_great_expectations()
        lazy = importlib.util._LazyModule
        print(sorted(m for m in ("scipy.stats", "altair") if isinstance(sys.modules[m], lazy)))
        print(sys.modules["scipy.stats"].norm.cdf(0.0))  # loads when first used
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.split() == ["['altair',", "'scipy.stats']", "0.5"]


def test_validate_uses_the_side_process_and_expands_distinct_rows(as_the_runs_side_process):
    rows = pl.concat([warehouse_rows().drop("row_id")] * 3).with_row_index("row_id")
    outcomes = validate_distinct(rows, "warehouse_rows")
    assert {o.reason: o.row_ids for o in outcomes}["empty SKU"] == [1, 7, 13]
    assert as_the_runs_side_process.alive


def test_the_side_process_judges_by_the_suite_this_process_read(
    as_the_runs_side_process, monkeypatch
):
    """A suite changed after the side process started (here: at most 10 units) is the one used."""
    spec = json.loads(json.dumps(gx.load_suite("warehouse_rows")))
    [limit] = [e for e in spec["expectations"] if e["meta"]["reason"] == "quantity out of range"]
    limit["kwargs"]["max_value"] = 10
    monkeypatch.setattr(suites, "load_suite", lambda name: spec)
    outcomes = validate_distinct(warehouse_rows(), "warehouse_rows")
    assert {o.reason: o.row_ids for o in outcomes}["quantity out of range"] == []
    rows = warehouse_rows().with_columns(pl.col("quantity_number").replace(3.0, 20.0))
    outcomes = validate_distinct(rows, "warehouse_rows")
    assert {o.reason: o.row_ids for o in outcomes}["quantity out of range"] == [0]
    assert as_the_runs_side_process.alive  # judged there, not here


def test_a_suite_error_in_the_side_process_is_raised_here(side_process):
    with pytest.raises(SuiteError, match="cannot load suite"):
        side_process.validate(warehouse_rows(), "no_such_suite")
    assert side_process.alive  # an error in a suite is not a broken process


def test_a_killed_side_process_is_replaced_by_this_process(as_the_runs_side_process, caplog):
    pid = as_the_runs_side_process.pid
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    with caplog.at_level(logging.WARNING):
        outcomes = validate_distinct(warehouse_rows(), "warehouse_rows")
    assert outcomes == validate_here(warehouse_rows(), "warehouse_rows")
    assert validation_process.running() is None  # from now on, in this process
    assert f"side process (pid {pid}) did not answer" in caplog.text
    with pytest.raises(ProcessGone):
        as_the_runs_side_process.validate(warehouse_rows(), "warehouse_rows")


def test_a_side_process_killed_mid_answer_loses_no_verdict(as_the_runs_side_process):
    """Killed while it judges a suite: the verdicts still come, from this process."""
    big = pl.concat([warehouse_rows().drop("row_id")] * 50_000).with_row_index("row_id")
    big = big.with_columns(pl.col("quantity_number") + pl.col("row_id").cast(pl.Float64))
    pid = as_the_runs_side_process.pid
    as_the_runs_side_process.validate(warehouse_rows(), "warehouse_rows")  # GX is imported there
    killer = subprocess.Popen(["sh", "-c", f"sleep 0.3; kill -9 {pid}"])
    outcomes = suites.validate(big, "warehouse_rows")
    killer.wait()
    assert wait_gone(pid)
    assert outcomes == validate_here(big, "warehouse_rows")


def test_stopping_ends_the_side_process_at_once(side_process):
    side_process.validate(payload(), "payload")
    pid = side_process.pid
    started = time.monotonic()
    side_process.stop()
    assert not alive(pid)
    assert time.monotonic() - started < validation_process.STOP_TIMEOUT_SECONDS
    with pytest.raises(ProcessGone):
        side_process.validate(payload(), "payload")


def run_python(code: str, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_a_process_that_exits_leaves_no_side_process_behind():
    parent = run_python(
        """
        from tasks.checks import suites, validation_process
        suites.preload()
        print(validation_process.running().pid, flush=True)
        import sys
        sys.exit(0)
        """
    )
    out, _ = parent.communicate(timeout=60)
    assert parent.returncode == 0
    assert wait_gone(int(out.split()[0]), timeout=5)


def test_a_killed_parent_leaves_no_side_process_behind():
    """kill -9 of the run: its stdin pipe closes, and the side process exits by itself."""
    parent = run_python(
        """
        import time
        from tasks.checks import suites, validation_process
        suites.preload()
        print(validation_process.running().pid, flush=True)
        time.sleep(120)
        """
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    assert wait_gone(child)


def test_a_process_that_already_imported_gx_starts_no_side_process():
    probe = run_python(
        """
        import great_expectations
        from tasks.checks import suites, validation_process
        suites.preload()
        print(validation_process.running())
        """
    )
    out, _ = probe.communicate(timeout=120)
    assert out.strip() == "None"


def test_in_process_validation_can_be_asked_for():
    probe = run_python(
        """
        import sys
        from tasks.checks import suites, validation_process
        suites.preload()
        print(validation_process.running(), "great_expectations" in sys.modules)
        """,
        env={**os.environ, validation_process.DISABLE_ENV: "1"},
    )
    out, _ = probe.communicate(timeout=120)
    assert out.split()[0] == "None"  # and GX imports here, in a thread, instead


def test_the_side_process_module_runs_as_a_script():
    """`python -m` of the module is how the child starts; it answers and exits on EOF."""
    child = subprocess.Popen(
        [sys.executable, "-m", MODULE], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    validation_process.write_message(child.stdin, ("payload", None, payload()))
    kind, outcomes = validation_process.read_message(child.stdout)
    assert kind == "outcomes" and outcomes == validate_here(payload(), "payload")
    child.stdin.close()
    assert child.wait(timeout=10) == 0
    child.stdout.close()
