"""What every warehouse source returns: one frame of raw rows, plus where and when it came from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from tasks.config import WarehouseBase

FEED_SCHEMA = {
    "warehouse": pl.String,
    "source": pl.String,
    "line": pl.Int64,
    "sku_text": pl.String,
    "quantity_text": pl.String,
}


class WarehouseUnreadable(Exception):
    """A warehouse feed that cannot be read; the run stops before anything is sent."""

    def __init__(self, warehouse: str, cause: str) -> None:
        super().__init__(f"warehouse {warehouse!r}: {cause}")
        self.warehouse = warehouse
        self.cause = cause


class WarehouseUnavailable(WarehouseUnreadable):
    """A failure that may pass (connection, timeout, HTTP 429/5xx): the extract task retries it."""


@dataclass(frozen=True)
class Feed:
    """One warehouse's rows as read, before any check: every value still text."""

    warehouse: str
    source: str
    rows: pl.DataFrame  # FEED_SCHEMA
    bytes_read: int
    modified_at: datetime


def feed_frame(
    warehouse: WarehouseBase,
    source: str,
    frame: pl.DataFrame,
    bytes_read: int,
    modified_at: datetime,
    *,
    first_line: int,
) -> Feed:
    """Pick the configured SKU and quantity columns, as text, numbered by the line they came from."""
    missing = [
        c for c in (warehouse.sku_column, warehouse.quantity_column) if c not in frame.columns
    ]
    if missing:
        raise WarehouseUnreadable(
            warehouse.name,
            f"{source}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"the file has {', '.join(repr(c) for c in frame.columns) or 'no columns'}",
        )
    if frame.height == 0 and not warehouse.allow_empty:
        raise WarehouseUnreadable(
            warehouse.name,
            f"{source}: has a header but no rows; refusing to treat the warehouse as empty "
            "(set allow_empty = true for this warehouse if it really can be)",
        )
    rows = frame.select(
        pl.lit(warehouse.name, pl.String).alias("warehouse"),
        pl.lit(source, pl.String).alias("source"),
        (pl.int_range(pl.len(), dtype=pl.Int64) + first_line).alias("line"),
        pl.col(warehouse.sku_column).cast(pl.String).alias("sku_text"),
        pl.col(warehouse.quantity_column).cast(pl.String).alias("quantity_text"),
    )
    return Feed(warehouse.name, source, rows, bytes_read, modified_at)
