"""The reconciliation rules as pure functions of polars frames, under a thin Prefect task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.checks.rows import CATALOG_ROW, CheckedRows
from tasks.sources.warehouse import WarehouseBase
from tasks.text_columns import is_duplicated

# What happens to each catalog product this run, in order of precedence.
HELD_AMBIGUOUS = "held: vendorSku on several catalog products"
NOT_TRACKED = "not tracked"
HELD_NO_SKU = "held: no vendorSku in the catalog"
HELD_BAD_ROWS = "held: a warehouse row had an unusable quantity"
HELD_TOO_LARGE = "held: total above the largest quantity the platform holds"
PUSHED = "set from the warehouses"
ZEROED_ABSENT = "set to 0: in no warehouse"
KEPT_ABSENT = "left alone: in no warehouse"
STATUSES = (
    PUSHED,
    ZEROED_ABSENT,
    KEPT_ABSENT,
    NOT_TRACKED,
    HELD_AMBIGUOUS,
    HELD_NO_SKU,
    HELD_BAD_ROWS,
    HELD_TOO_LARGE,
)
SENT_STATUSES = (PUSHED, ZEROED_ABSENT)
STATUS = pl.Enum(STATUSES)  # a byte per product rather than a string


@dataclass(frozen=True)
class Plan:
    """Every catalog product with its new quantity (if any) and what happens to it."""

    products: pl.DataFrame  # id, vendorSku, quantity (Int64, null if not sent), status, catalog_row

    @cached_property
    def payload(self) -> pl.DataFrame:
        """The products to send: id, vendorSku, quantity (and catalog_row), in no set order.

        Not sorted here: only what the delta keeps is sent, and sorted then (tasks/delta.py);
        sorting a million SKUs costs far more than sorting the few thousand a cycle sends.
        """
        return self.products.filter(pl.col("status").is_in(SENT_STATUSES)).select(
            "id", "vendorSku", "quantity", CATALOG_ROW
        )

    def counts(self) -> dict[str, int]:
        found = dict(self.products.group_by("status").len().iter_rows())
        return {status: int(found.get(status, 0)) for status in STATUSES}


def planned_rows(frame: pl.DataFrame, catalog: pl.DataFrame) -> pl.Series | None:
    """Per row of a planned frame, whether its CATALOG_ROW is the catalog row holding its id.

    Null for a null id; None if the frame names no catalog rows (or the catalog is empty).
    A gather and a comparison, where looking a million ids up in the catalog keys them all.
    """
    if CATALOG_ROW not in frame.columns or catalog.height == 0:
        return None
    rows = frame[CATALOG_ROW].cast(pl.Int64)
    found = rows.is_between(0, catalog.height - 1).fill_null(False)
    return (catalog["id"].gather(rows.set(~found, 0)) == frame["id"]) & found


def available_by_row(
    stock: pl.LazyFrame, safety_stock: Mapping[str, int], catalog: pl.DataFrame
) -> pl.Series:
    """Each SKU's stock after safety stock, per row of the catalog the stock's catalog_row names.

    Null where no warehouse lists the row's SKU (and, after check_rows, on all but one row of
    a SKU that several catalog products share: those are held anyway). Summed by catalog row,
    an integer, then scattered: cheaper than keying the SKU texts twice, to sum and then to
    join.
    """
    warehouse = stock.collect_schema()["warehouse"]
    sums = (
        stock.filter(pl.col(CATALOG_ROW).is_not_null())
        .select(CATALOG_ROW, _after_safety_stock(safety_stock, _enum(warehouse)))
        .group_by(CATALOG_ROW)
        .agg(pl.col("available").sum())
        .collect(engine="streaming")
    )
    if sums.height and sums[CATALOG_ROW].max() >= catalog.height:  # type: ignore[operator]
        raise ValueError("the stock names catalog rows this catalog does not have")
    available = pl.repeat(None, catalog.height, dtype=pl.Int64, eager=True).alias("available")
    return available.scatter(sums[CATALOG_ROW], sums["available"])


def _after_safety_stock(safety_stock: Mapping[str, int], warehouse: pl.Enum) -> pl.Expr:
    """quantity less its warehouse's safety stock, floored at 0, as "available".

    Each warehouse's reserve is looked up by its number in the Enum: cheaper than replacing a
    million warehouse names by their reserves.
    """
    reserves = pl.Series([safety_stock.get(w, 0) for w in warehouse.categories], dtype=pl.Int64)
    reserve = pl.lit(reserves).gather(pl.col("warehouse").to_physical())
    return (pl.col("quantity") - reserve).clip(lower_bound=0).alias("available")


def _enum(dtype: pl.DataType) -> pl.Enum:
    assert isinstance(dtype, pl.Enum), "check_rows gives the warehouse as an Enum"
    return dtype


def plan_updates(
    available: pl.Series,
    held_skus: pl.Series,
    catalog: pl.DataFrame,
    absent: Literal["zero", "keep"],
    max_quantity: int,
) -> Plan:
    """Decide, per catalog product, what to send and why.

    `available` is, per catalog row, its SKU's stock after safety stock (null: in no warehouse);
    a total above `max_quantity`, the largest the platform holds, is held.
    """
    sku = pl.col("vendorSku")
    ambiguous = sku.is_not_null() & pl.col("repeated")
    listed = pl.col("available").is_not_null()
    products = (
        catalog.with_columns(is_duplicated(catalog["vendorSku"]).alias("repeated"), available)
        .with_row_index(CATALOG_ROW)
        .with_columns(
            pl.when(ambiguous)
            .then(pl.lit(HELD_AMBIGUOUS, STATUS))
            .when(~pl.col("tracked"))
            .then(pl.lit(NOT_TRACKED, STATUS))
            .when(sku.is_null())
            .then(pl.lit(HELD_NO_SKU, STATUS))
            .when(sku.is_in(held_skus.implode()))
            .then(pl.lit(HELD_BAD_ROWS, STATUS))
            .when(listed & (pl.col("available") > max_quantity))
            .then(pl.lit(HELD_TOO_LARGE, STATUS))
            .when(listed)
            .then(pl.lit(PUSHED, STATUS))
            .when(pl.lit(absent == "zero"))
            .then(pl.lit(ZEROED_ABSENT, STATUS))
            .otherwise(pl.lit(KEPT_ABSENT, STATUS))
            .alias("status")
        )
        .with_columns(
            pl.when(pl.col("status") == PUSHED)
            .then(pl.col("available"))
            .when(pl.col("status") == ZEROED_ABSENT)
            .then(pl.lit(0, pl.Int64))
            .cast(pl.Int64)
            .alias("quantity")
        )
        .select("id", "vendorSku", "quantity", "status", CATALOG_ROW)
    )
    return Plan(products)


def reconcile_checked(
    checked: CheckedRows,
    catalog: pl.DataFrame,
    safety_stock: Mapping[str, int],
    absent: Literal["zero", "keep"],
    max_quantity: int,
) -> Plan:
    """All the rules over checked rows: safety stock held back, warehouses added, a decision
    per catalog product.

    `catalog` must be the one check_rows was given: the stock names its rows.
    """
    available = available_by_row(checked.stock, safety_stock, catalog)
    return plan_updates(available, checked.held_skus, catalog, absent, max_quantity)


@task(name="reconcile", cache_policy=NO_CACHE)
def reconcile_task(
    checked: CheckedRows,
    catalog: pl.DataFrame,
    warehouses: Sequence[WarehouseBase],
    absent: Literal["zero", "keep"],
    max_quantity: int,
) -> Plan:
    """Apply the rules and log how many products land in each outcome."""
    safety_stock = {w.name: w.safety_stock for w in warehouses}
    plan = reconcile_checked(checked, catalog, safety_stock, absent, max_quantity)
    logger = get_run_logger()
    for status, count in plan.counts().items():
        if count:
            logger.info("%s: %d product(s)", status, count)
    return plan
