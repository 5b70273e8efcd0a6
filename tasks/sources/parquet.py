"""Parquet exports on disk."""

from __future__ import annotations

import io
from typing import Literal

import polars as pl

from tasks.sources.feed import Feed, Secrets, SourceKind, WarehouseUnreadable, feed_frame
from tasks.sources.local_files import FileWarehouse, newest_file, probe_file, read_bytes


class ParquetWarehouse(FileWarehouse):
    kind: Literal["parquet"]


def read_parquet_feed(warehouse: ParquetWarehouse, secrets: Secrets | None = None) -> Feed:
    """Read a Parquet export; SKU and quantity columns are taken as text for the checks."""
    path = newest_file(warehouse.name, warehouse.path)
    data, modified = read_bytes(warehouse.name, path)
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except pl.exceptions.PolarsError as exc:
        raise WarehouseUnreadable(
            warehouse.name, f"{path}: not a readable Parquet file: {exc}"
        ) from None
    return feed_frame(warehouse, str(path), frame, len(data), modified, first_line=1)


KIND = SourceKind("parquet", ParquetWarehouse, read_parquet_feed, probe=probe_file)
