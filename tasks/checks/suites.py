"""Great Expectations: run a suite stored as JSON in expectations/ over a polars frame."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

SUITES_DIR = Path(__file__).resolve().parents[2] / "expectations"
ROW_ID = "row_id"

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


class SuiteError(Exception):
    """A suite could not be evaluated at all (a bug or a broken suite file, not bad data)."""


@dataclass(frozen=True)
class Outcome:
    """One expectation's verdict, with the row_ids it flagged."""

    expectation: str
    column: str
    reason: str
    action: str
    success: bool
    unexpected_count: int
    row_ids: list[int]


def preload() -> None:
    """Have Great Expectations ready by the time the first suite runs (~2.5 s of import).

    A side process imports it on the other core (tasks/checks/validation_process.py); where
    none can start, a thread imports it here, overlapped with reading the feeds. Whoever needs
    it first then waits for that import instead of starting another (the module lock).
    """
    from tasks.checks import validation_process

    if validation_process.start() is None and "great_expectations" not in sys.modules:
        threading.Thread(
            target=importlib.import_module,
            args=("great_expectations",),
            name="import-great-expectations",
            daemon=True,
        ).start()


def import_great_expectations() -> None:
    """Import GX and what its first validation would load lazily (the side process's start)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: F401

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO is noise here
    gx.get_context(mode="ephemeral")


@cache
def load_suite(name: str) -> dict[str, Any]:
    """The suite's JSON, read once per process."""
    path = SUITES_DIR / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SuiteError(f"cannot load suite {path}: {exc}") from None


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


def validate_here(
    frame: pl.DataFrame, suite_name: str, spec: dict[str, Any] | None = None
) -> list[Outcome]:
    """Validate the frame against the named suite (its JSON `spec`, if given) in this process."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO is noise here
    spec = load_suite(suite_name) if spec is None else spec
    columns = sorted({e["kwargs"]["column"] for e in spec["expectations"]} | {ROW_ID})
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    suite = context.suites.add(gx.ExpectationSuite(**json.loads(json.dumps(spec))))
    batch = (
        context.data_sources.add_pandas("frames")
        .add_dataframe_asset(name=suite_name)
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": frame.select(columns).to_pandas()})
    )
    result = batch.validate(
        suite,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
    )
    outcomes = []
    for item in result.results:
        config = item.expectation_config
        assert config is not None  # GX fills it for every result of a suite run
        if item.exception_info and item.exception_info.get("raised_exception"):
            raise SuiteError(
                f"suite {suite_name}: {config.type} on {config.kwargs.get('column')} raised "
                f"{item.exception_info.get('exception_message')}"
            )
        details = item.result or {}
        row_ids = [int(entry[ROW_ID]) for entry in details.get("unexpected_index_list") or []]
        outcomes.append(
            Outcome(
                expectation=config.type,
                column=str(config.kwargs.get("column")),
                reason=str(config.meta.get("reason", config.type)),
                action=str(config.meta.get("action", "fail")),
                success=bool(item.success),
                unexpected_count=int(details.get("unexpected_count") or 0),
                row_ids=row_ids,
            )
        )
    order = {e["meta"]["reason"]: i for i, e in enumerate(spec["expectations"])}
    return sorted(outcomes, key=lambda o: order.get(o.reason, len(order)))


def validate_distinct(frame: pl.DataFrame, suite_name: str) -> list[Outcome]:
    """Like validate, but GX sees each distinct combination of the checked values once.

    For suites whose every expectation judges one row by its own values (no uniqueness):
    a row's verdict then depends only on those values, so validating 9M rows costs what
    validating their few hundred distinct combinations does. Row ids and counts are the rows'.
    """
    spec = load_suite(suite_name)
    for expectation in spec["expectations"]:
        kind = expectation["type"]
        if not kind.startswith("expect_column_values_to_") or "unique" in kind:
            raise SuiteError(f"suite {suite_name}: {kind} does not judge one row at a time")
    columns = sorted({e["kwargs"]["column"] for e in spec["expectations"]})
    # The streaming engine finds the few hundred combinations, and later the failing rows, in
    # morsels: the in-memory engine keyed all 9M rows at once (+0.4 GB for unique() alone).
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
