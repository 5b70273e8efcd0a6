"""Parquet exports on disk."""

from __future__ import annotations

import io
from typing import Literal

import polars as pl
from pydantic import Field, field_validator

from tasks.config.fields import relative_to_config
from tasks.sources.feed import Feed, Secrets, SourceKind, WarehouseUnreadable, feed_frame
from tasks.sources.local_files import newest_file, read_bytes
from tasks.sources.warehouse import WarehouseBase


class ParquetWarehouse(WarehouseBase):
    kind: Literal["parquet"]
    path: str = Field(description="file or glob; a glob picks the newest matching file")

    _resolve = field_validator("path")(relative_to_config)


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


KIND = SourceKind("parquet", ParquetWarehouse, read_parquet_feed)
