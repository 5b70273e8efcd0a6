"""What every warehouse's configuration has in common, whatever kind of source it is."""

from __future__ import annotations

import codecs
from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator

from tasks.config.fields import Duration, Section


class WarehouseBase(Section):
    kind: str = Field(description="the kind of source, which decides the other keys")
    name: str = Field(
        min_length=1, description="unique; names the warehouse in the summary and every error"
    )
    sku_column: str = Field(
        min_length=1, description="the column holding the SKU (http: a dotted path in a record)"
    )
    quantity_column: str = Field(
        min_length=1,
        description="the column holding the quantity (http: a dotted path in a record)",
    )
    safety_stock: int = Field(0, ge=0, description="units held back per SKU in this warehouse")
    allow_empty: bool = Field(
        False,
        description="accept a feed with a header but no rows, no records or no result rows "
        "(else the run fails)",
    )
    max_age: Duration | None = Field(
        None, description='a feed older than this is stale, e.g. "2h" (default: no limit)'
    )
    timestamp_column: str | None = Field(
        None,
        description="take the feed's age from the newest ISO 8601 time in this column (no "
        "offset: UTC), not from the file's time",
    )
    on_stale: Literal["fail", "use_last_good"] = Field(
        "fail",
        description="a stale feed fails the run, or that warehouse's last good feed is used",
    )


class CsvOptions(Section):
    delimiter: str = Field(",", min_length=1, max_length=1, description="the field separator")
    encoding: str = Field(
        "utf-8", description='any Python codec name, e.g. "cp1252"; a UTF-8 BOM is fine'
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None


class RemoteWarehouse(WarehouseBase):
    timeout_seconds: float = Field(30.0, gt=0, description="connect / per-request timeout")
    retries: int = Field(
        3, ge=0, le=20, description="retries of the warehouse's read after a transient error"
    )
    retry_backoff_seconds: float = Field(
        2.0, ge=0, description="first retry delay; doubles on each further retry, with jitter"
    )
    poll_interval: Duration = Field(
        timedelta(seconds=60), description="how often `inventory-sync watch` checks for a new feed"
    )
