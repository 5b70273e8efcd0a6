"""The GX payload suite over what is about to be sent; any failure is a bug, so stop."""

from __future__ import annotations

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.checks.suites import ROW_ID, validate_distinct
from tasks.reconcile import planned_rows
from tasks.text_columns import is_duplicated

SUITE = "payload"


class PayloadInvalid(Exception):
    """The outgoing payload broke the payload suite; nothing was sent."""


def in_catalog(payload: pl.DataFrame, catalog: pl.DataFrame) -> pl.Series:
    """Whether each payload id is a catalog id (null for a null id).

    A planned payload names the catalog row each product came from: the id must be that
    row's, which proves it is in the catalog without keying a million ids. Any other payload
    is looked up.
    """
    planned = planned_rows(payload, catalog)
    return payload["id"].is_in(catalog["id"].implode()) if planned is None else planned


def check_payload(payload: pl.DataFrame, catalog: pl.DataFrame) -> None:
    """Raise PayloadInvalid, naming each failed expectation and example ids, if the suite fails."""
    # GX checks flags computed here, not the 1M id strings it would hash and copy; the flags
    # are row-by-row, so it sees each distinct combination once (see validate_distinct)
    frame = payload.with_row_index(ROW_ID).with_columns(
        pl.col("id").is_not_null().alias("id_is_present"),
        in_catalog(payload, catalog).fill_null(True).alias("id_in_catalog"),
        (~is_duplicated(payload["id"]) | pl.col("id").is_null()).alias("id_is_unique"),
    )
    failures = [o for o in validate_distinct(frame, SUITE) if not o.success]
    if not failures:
        return
    lines = []
    for outcome in failures:
        examples = (
            frame.filter(pl.col(ROW_ID).is_in(outcome.row_ids[:5]))
            .select("id", "vendorSku", "quantity")
            .rows()
        )
        shown = ", ".join(f"{pid} ({sku}) = {qty}" for pid, sku, qty in examples)
        lines.append(
            f"  - {outcome.reason}: {outcome.unexpected_count} product(s)"
            + (f", e.g. {shown}" if shown else "")
        )
    raise PayloadInvalid(
        "the outgoing payload failed the payload suite, so nothing was sent "
        "(this is a bug in inventory-sync; please report it):\n" + "\n".join(lines)
    )


@task(name="check-payload", cache_policy=NO_CACHE)
def check_payload_task(payload: pl.DataFrame, catalog: pl.DataFrame) -> None:
    """Validate the payload; a failure stops the run before the load."""
    check_payload(payload, catalog)
    get_run_logger().info("payload suite passed: %d product(s) ready to send", payload.height)
