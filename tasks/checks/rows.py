"""Parse every warehouse row in polars and flag bad ones with the GX rows suite."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.checks.suites import Outcome, validate_distinct
from tasks.lightspeed.contract import MAX_QUANTITY

SUITE = "warehouse_rows"
INTEGER_TEXT = r"^[+-]?[0-9]+(\.0+)?$"
DROPPING_ACTIONS = ("quarantine", "hold")
FLAG_SCHEMA = {"row_id": pl.UInt32, "reason": pl.String, "action": pl.String}


@dataclass(frozen=True)
class CheckedRows:
    """The rows that count, the rows that were flagged, and SKUs held back this run."""

    good: pl.DataFrame  # warehouse, sku, quantity (Int64), for every row that counts
    flagged: pl.DataFrame  # one row per (row, reason): where it came from, what it said, why
    held_skus: pl.Series  # SKUs with at least one unusable quantity: nothing pushed for them


def parse_rows(rows: pl.DataFrame, catalog_skus: pl.Series) -> pl.DataFrame:
    """Add the columns the suite checks: trimmed SKU, parsed quantity, one flag per rule.

    The suite sees only null-free flags and the number, never the text: GX converts what it
    checks to pandas and hashes it, which costs seconds per million strings. Each flag is
    true where its rule does not apply, so a row fails exactly the rules it did before.
    """
    sku = pl.col("sku_text").str.strip_chars()
    text = pl.col("quantity_text").str.strip_chars()
    digits = pl.col("digits")
    return (
        rows.with_columns(
            pl.when(sku != "").then(sku).alias("sku"),
            pl.when(text != "").then(text).alias("quantity_trimmed"),
        )
        .with_columns(
            pl.col("sku").is_not_null().alias("sku_is_present"),
            pl.col("quantity_trimmed").is_not_null().alias("quantity_is_present"),
            pl.col("quantity_trimmed").str.contains(INTEGER_TEXT).alias("quantity_is_integer"),
        )
        .with_columns(
            pl.when(pl.col("quantity_is_integer"))
            .then(pl.col("quantity_trimmed").str.replace(r"\.0+$", "").str.strip_prefix("+"))
            .alias("digits")
        )
        .with_columns(digits.cast(pl.Float64, strict=False).alias("quantity_number"))
        .with_columns(
            pl.when(pl.col("quantity_number").abs() <= MAX_QUANTITY)
            .then(digits.cast(pl.Int64, strict=False))
            .alias("quantity"),
            # a missing quantity or SKU is its own rule's, not these two's
            pl.col("quantity_is_integer").fill_null(True),
            pl.col("sku")
            .is_in(catalog_skus.drop_nulls().unique().implode())
            .fill_null(True)
            .alias("sku_in_catalog"),
        )
        .drop("quantity_trimmed", "digits")  # millions of strings no later step reads
    )


def flags_from(outcomes: list[Outcome]) -> pl.DataFrame:
    """One row per (row_id, reason) the suite flagged."""
    frames = [
        pl.DataFrame(
            {"row_id": o.row_ids, "reason": o.reason, "action": o.action},
            schema=FLAG_SCHEMA,
        )
        for o in outcomes
        if o.row_ids
    ]
    return pl.concat(frames) if frames else pl.DataFrame(schema=FLAG_SCHEMA)


def check_rows(rows: pl.DataFrame, catalog: pl.DataFrame) -> CheckedRows:
    """Parse, validate with GX, and split rows into those that count and those flagged."""
    parsed = parse_rows(rows, catalog["vendorSku"])
    flags = flags_from(validate_distinct(parsed, SUITE))
    dropped = flags.filter(pl.col("action").is_in(DROPPING_ACTIONS))["row_id"].unique()
    # join only the few flagged rows, never the millions: a join hashes its whole input
    good = (
        parsed.select("row_id", "warehouse", "sku", "quantity")
        .filter(~pl.col("row_id").is_in(dropped.implode()))
        .drop("row_id")
    )
    flagged_rows = parsed.filter(pl.col("row_id").is_in(flags["row_id"].unique().implode()))
    flagged = (
        flags.join(flagged_rows, on="row_id", how="left")
        .select(
            "row_id", "warehouse", "source", "line", "sku_text", "quantity_text", "reason", "action"
        )
        .sort("row_id", "reason")
    )
    held = (
        flagged.filter(pl.col("action") == "hold")
        .join(flagged_rows.select("row_id", "sku"), on="row_id")["sku"]
        .drop_nulls()
        .unique()
        .sort()
    )
    return CheckedRows(good=good, flagged=flagged, held_skus=held)


@task(name="check-rows", cache_policy=NO_CACHE)
def check_rows_task(rows: pl.DataFrame, catalog: pl.DataFrame) -> CheckedRows:
    """Run the warehouse-rows suite and log what it flagged."""
    checked = check_rows(rows, catalog)
    logger = get_run_logger()
    logger.info(
        "%d rows checked: %d count, %d flagged, %d SKU(s) held",
        rows.height,
        checked.good.height,
        checked.flagged["row_id"].n_unique(),
        checked.held_skus.len(),
    )
    for reason, count in checked.flagged.group_by("reason").len().sort("reason").iter_rows():
        logger.info("  %s: %d row(s)", reason, count)
    return checked
