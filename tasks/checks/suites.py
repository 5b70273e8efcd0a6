"""Validation of a frame by a named suite: in the side process when it runs, else here."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from dataclasses import replace

import polars as pl

from tasks.checks.gx import ROW_ID, Outcome, SuiteError, load_suite, validate_here


def preload() -> None:
    """Have Great Expectations ready by the time the first suite runs (its import is slow).

    A side process imports it on the other core (tasks/checks/validation_process.py); where
    none can start, a thread imports it here, overlapped with reading the feeds. Whoever needs
    it first then waits for that import instead of starting another (the module lock).
    """
    from tasks.checks import validation_process

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if validation_process.start() is None and "great_expectations" not in sys.modules:
        threading.Thread(
            target=importlib.import_module,
            args=("great_expectations",),
            name="import-great-expectations",
            daemon=True,
        ).start()


def validate(frame: pl.DataFrame, suite_name: str) -> list[Outcome]:
    """Validate the frame (which must carry a row_id column) against the named suite.

    In the side process if one runs (see preload), else here; the verdicts are the same.
    """
    from tasks.checks import validation_process

    spec = load_suite(suite_name)  # this process's suite, also the side process's
    process = validation_process.running()
    if process is not None:
        try:
            outcomes: list[Outcome] = process.validate(frame, suite_name, spec)
            return outcomes
        except validation_process.ProcessGone as exc:
            validation_process.forget(process)
            _run_logger().warning(
                "the Great Expectations side process (pid %s) did not answer (%s): "
                "validating in this process from now on",
                process.pid,
                exc,
            )
    return validate_here(frame, suite_name, spec)


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger inside a Prefect run (the UI shows it), else this module's."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def validate_distinct(frame: pl.DataFrame, suite_name: str) -> list[Outcome]:
    """Like validate, but GX sees each distinct combination of the checked values once.

    For suites whose every expectation judges one row by its own values (no uniqueness):
    a row's verdict then depends only on those values, so validating millions of rows costs what
    validating their few hundred distinct combinations does. Row ids and counts are the rows'.
    """
    spec = load_suite(suite_name)
    for expectation in spec["expectations"]:
        kind = expectation["type"]
        if not kind.startswith("expect_column_values_to_") or "unique" in kind:
            raise SuiteError(f"suite {suite_name}: {kind} does not judge one row at a time")
    columns = sorted({e["kwargs"]["column"] for e in spec["expectations"]})
    # The streaming engine finds the few hundred combinations, and later the failing rows, in
    # morsels, where the in-memory engine would key every row at once.
    combos = (
        frame.lazy().select(columns).unique().collect(engine="streaming").with_row_index(ROW_ID)
    )
    outcomes = validate(combos, suite_name)
    failing = sorted({i for outcome in outcomes for i in outcome.row_ids})
    matched = (
        frame.lazy()
        .select(ROW_ID, *columns)
        .join(
            combos.lazy().filter(pl.col(ROW_ID).is_in(failing)).rename({ROW_ID: "combo"}),
            on=columns,
            how="inner",
            nulls_equal=True,
        )
        .collect(engine="streaming")
    )
    expanded = []
    for outcome in outcomes:
        rows = matched.filter(pl.col("combo").is_in(outcome.row_ids))[ROW_ID].sort()
        expanded.append(
            replace(outcome, unexpected_count=rows.len(), row_ids=[int(r) for r in rows])
        )
    return expanded
