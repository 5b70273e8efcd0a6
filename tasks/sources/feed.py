"""The contract of a warehouse source: the feed it returns (raw rows, where and when from) and its kind."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
from pydantic import SecretStr

from tasks.errors import SyncError
from tasks.sources.warehouse import WarehouseBase

FEED_SCHEMA = {"sku_text": pl.String, "quantity_text": pl.String}


class WarehouseUnreadable(SyncError):
    """A warehouse feed that cannot be read; the run stops before anything is sent."""

    def __init__(self, warehouse: str, cause: str) -> None:
        super().__init__(f"warehouse {warehouse!r}: {cause}")
        self.warehouse = warehouse
        self.cause = cause


class WarehouseUnavailable(WarehouseUnreadable):
    """A failure that may pass (connection, timeout, HTTP 429/5xx): worth another attempt."""

    def __init__(self, warehouse: str, cause: str, retry_after: float | None = None) -> None:
        super().__init__(warehouse, cause)
        self.retry_after = retry_after  # seconds the server asked us to wait, if it said


@dataclass(frozen=True)
class Wording:
    """How one kind of source names its columns and its rows in the feed checks' messages."""

    missing: str  # with {missing} and {present}
    empty: str


FILE_WORDING = Wording(
    "missing column(s) {missing}; the file has {present}", "has a header but no rows"
)
QUERY_WORDING = Wording(
    "the query returns no column {missing}; it returns {present}", "the query returned no rows"
)
RECORDS_WORDING = Wording(
    "no record has {missing}; the records have {present}", "returned no records"
)


@dataclass(frozen=True)
class Feed:
    """One warehouse's rows as read, before any check: every value still text.

    Where a row came from is the feed's warehouse and source and the row's position: row i is
    line (or record) first_line + i. Only the two texts are stored per row; a warehouse, file
    name and line number repeated on every row more than doubled a feed's memory.
    """

    warehouse: str
    source: str
    rows: pl.DataFrame  # FEED_SCHEMA, in the order of the source
    bytes_read: int
    modified_at: datetime
    first_line: int  # the line or record number of the first row

    def numbered(self) -> pl.DataFrame:
        """line, sku_text, quantity_text: each row with the line (or record) it came from."""
        return self.rows.select(
            (pl.int_range(pl.len(), dtype=pl.Int64) + self.first_line).alias("line"), pl.all()
        )


def feed_frame(
    warehouse: WarehouseBase,
    source: str,
    frame: pl.DataFrame,
    bytes_read: int,
    modified_at: datetime,
    *,
    first_line: int,
    wording: Wording = FILE_WORDING,
    header: Sequence[str] | None = None,
) -> Feed:
    """Pick the configured SKU and quantity columns, as text; row i came from line first_line + i.

    The checks every kind shares live here: each configured column names exactly one column,
    even ignoring case and surrounding spaces; it exists; and a feed with no rows is refused
    unless the warehouse allows it (a truncated export must not zero stock). `header` is the
    column names as the source wrote them, where the frame's differ (polars renames repeats).
    """
    configured = {
        "sku_column": warehouse.sku_column,
        "quantity_column": warehouse.quantity_column,
    }
    if warehouse.timestamp_column:
        configured["timestamp_column"] = warehouse.timestamp_column
    ambiguous = ambiguous_columns(configured, frame.columns if header is None else header)
    if ambiguous:
        raise WarehouseUnreadable(
            warehouse.name,
            f"{source}: " + "; ".join(ambiguous) + "; refusing to guess which one to read "
            "(rename or remove the extra column in the export)",
        )
    wanted = list(configured.values())
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise WarehouseUnreadable(
            warehouse.name,
            f"{source}: "
            + wording.missing.format(
                missing=", ".join(repr(c) for c in missing),
                present=", ".join(repr(c) for c in frame.columns) or "no columns",
            ),
        )
    if frame.height == 0 and not warehouse.allow_empty:
        raise WarehouseUnreadable(
            warehouse.name,
            f"{source}: {wording.empty}; refusing to treat the warehouse as empty "
            "(set allow_empty = true for this warehouse if it really can be)",
        )
    rows = frame.select(
        pl.col(warehouse.sku_column).cast(pl.String).alias("sku_text"),
        pl.col(warehouse.quantity_column).cast(pl.String).alias("quantity_text"),
    )
    if warehouse.timestamp_column and frame.height:
        modified_at = newest_timestamp(warehouse.name, source, frame[warehouse.timestamp_column])
    return Feed(warehouse.name, source, rows, bytes_read, modified_at, first_line)


def ambiguous_columns(configured: Mapping[str, str], header: Sequence[str]) -> list[str]:
    """Configured columns that more than one header names, comparing trimmed and case-folded."""
    problems = []
    for key, column in configured.items():
        wanted = column.strip().casefold()
        positions = [n for n, name in enumerate(header, 1) if name.strip().casefold() == wanted]
        if len(positions) < 2:
            continue
        names = [header[n - 1] for n in positions]
        if len({name.strip() for name in names}) == 1:
            problems.append(
                f"{key} {column!r} is ambiguous: the header has {names[0].strip()!r} "
                f"{len(positions)} times (columns {_and(positions)})"
            )
        else:
            shown = ", ".join(
                f"{name!r} (column {n})" for name, n in zip(names, positions, strict=True)
            )
            problems.append(
                f"{key} {column!r} is ambiguous: {len(positions)} columns match it when case "
                f"and surrounding spaces are ignored: {shown}"
            )
    return problems


def _and(numbers: Sequence[int]) -> str:
    """2 and 3; 2, 3 and 5."""
    text = [str(n) for n in numbers]
    return ", ".join(text[:-1]) + " and " + text[-1]


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


Secrets = Mapping[str, SecretStr]


@dataclass(frozen=True)
class Fingerprint:
    """A cheap look at a feed as it is now: where it is, and a token that changes when it does."""

    source: str  # the file or URL
    token: str  # e.g. "size:mtime" of the file, or the endpoint's ETag


@dataclass(frozen=True)
class SourceKind:
    """One kind of warehouse source: its settings, its reader, and what to do after a good run.

    `after_success` runs once every valid update of a run has landed (the SFTP drop moves the
    file it read into its archive); it returns where the feed went, or None if it did nothing.
    `retries_each_request`: the reader retries each request itself (a paged API), so the
    extract task must not retry the whole read on top of it.
    `probe`: the feed's fingerprint without reading it, for `inventory-sync watch`; None: the
    kind is not watched (the schedule reads it).
    """

    name: str  # the `kind` written in the configuration
    settings: type[WarehouseBase]
    read: Callable[[Any, Secrets], Feed]
    after_success: Callable[[Any, Secrets, Feed], str | None] | None = None
    retries_each_request: bool = False
    probe: Callable[[Any, Secrets], Fingerprint] | None = None
