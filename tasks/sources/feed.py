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
    wanted = [warehouse.sku_column, warehouse.quantity_column]
    if warehouse.timestamp_column:
        wanted.append(warehouse.timestamp_column)
    missing = [c for c in wanted if c not in frame.columns]
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
    if warehouse.timestamp_column and frame.height:
        modified_at = newest_timestamp(warehouse.name, source, frame[warehouse.timestamp_column])
    return Feed(warehouse.name, source, rows, bytes_read, modified_at)


def newest_timestamp(warehouse: str, source: str, column: pl.Series) -> datetime:
    """The feed's age from its own timestamps (ISO 8601; without an offset, UTC)."""
    text = column.cast(pl.String).str.strip_chars().str.replace(r"Z$", "+00:00")
    frame = pl.DataFrame({"t": text})
    parsed = frame.select(
        pl.coalesce(
            *[
                pl.col("t").str.to_datetime(
                    f"%Y-%m-%d{sep}%H:%M:%S%.f%:z", strict=False, time_unit="us"
                )
                for sep in ("T", " ")
            ],
            *[
                pl.col("t")
                .str.to_datetime(fmt, strict=False, time_unit="us")
                .dt.replace_time_zone("UTC")
                for fmt in ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d")
            ],
        ).dt.convert_time_zone("UTC")
    ).to_series()
    if parsed.null_count() > text.null_count():
        bad = text.filter(parsed.is_null() & text.is_not_null()).head(1).to_list()
        raise WarehouseUnreadable(
            warehouse,
            f"{source}: timestamp column {column.name!r} has a value that is not an "
            f"ISO 8601 time: {bad[0]!r}",
        )
    newest = parsed.max()
    if not isinstance(newest, datetime):
        raise WarehouseUnreadable(warehouse, f"{source}: timestamp column {column.name!r} is empty")
    return newest
