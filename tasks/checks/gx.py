"""Great Expectations in this process: a suite stored as JSON in expectations/, over a frame."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import polars as pl

SUITES_DIR = Path(str(files("expectations")))  # package data, in a wheel as in a checkout
ROW_ID = "row_id"


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


def import_great_expectations() -> None:
    """Import GX and what its first validation would load lazily (the side process's start)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
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


def validate_here(
    frame: pl.DataFrame, suite_name: str, spec: dict[str, Any] | None = None
) -> list[Outcome]:
    """Validate the frame against the named suite (its JSON `spec`, if given) in this process."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
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
