"""A toy warehouse kind, as a plugin would write one: its stock is written in the configuration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import polars as pl
from pydantic import Field

from tasks.sources.feed import Feed, Secrets, SourceKind, feed_frame
from tasks.sources.warehouse import WarehouseBase


class ToyWarehouse(WarehouseBase):
    kind: Literal["toy"]
    stock: dict[str, int] = Field(description="SKU -> quantity on hand")


def read_toy_feed(warehouse: ToyWarehouse, secrets: Secrets) -> Feed:
    """The configured stock as a feed, under the column names the configuration gives."""
    frame = pl.DataFrame(
        {
            warehouse.sku_column: list(warehouse.stock),
            warehouse.quantity_column: [str(q) for q in warehouse.stock.values()],
        },
        schema={warehouse.sku_column: pl.String, warehouse.quantity_column: pl.String},
    )
    source = f"toy://{warehouse.name}"
    return feed_frame(warehouse, source, frame, 0, datetime.now(UTC), first_line=1)


KIND = SourceKind("toy", ToyWarehouse, read_toy_feed)
