"""Small builders for test data: product dicts, stable ids, config blocks, warehouse feeds."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from tasks.config.secrets import resolve_state
from tasks.config.settings import load_settings
from tasks.sources.feed import FEED_SCHEMA, Feed
from tasks.state.store import StateStore

TOKEN = "test-token"
READ_AT = datetime(2026, 1, 1, tzinfo=UTC)

# warehouse, SKU text, quantity: as text (None: an empty cell), or a number written as text
FeedRow = tuple[str, str | None, str | int | None]


def pid(sku: str) -> str:
    """A stable product UUID per SKU, so tests can name products by SKU."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"test/{sku}"))


def product(
    sku: str | None, tracked: Any = True, quantity: int = 0, **extra: Any
) -> dict[str, Any]:
    inventory = {} if tracked is None else {"isInventoryTrackingEnabled": tracked}
    return {
        "id": extra.pop("id", None) or pid(str(sku)),
        "vendorSku": sku,
        "name": f"Product {sku}",
        "inventory": inventory,
        "quantity": quantity,
        **extra,
    }


def csv_warehouse(name: str, path: str, sku: str = "sku", qty: str = "qty", **extra: Any) -> str:
    """A [[warehouses]] TOML block for a CSV feed."""
    lines = [
        "[[warehouses]]",
        f'name = "{name}"',
        'kind = "csv"',
        f'path = "{path}"',
        f'sku_column = "{sku}"',
        f'quantity_column = "{qty}"',
    ]
    for key, value in extra.items():
        rendered = f'"{value}"' if isinstance(value, str) else str(value).lower()
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


def state_of(config: Path) -> StateStore:
    """The state store a configuration's runs use: its database and its tenant."""
    return StateStore(resolve_state(load_settings(config).state))


def feeds(*rows: FeedRow, warehouses: Sequence[str] = ()) -> list[Feed]:
    """Literal rows as the feeds a run reads: one per warehouse, before any check.

    A feed for each of `warehouses`, in that order, even one without rows; then one for each
    other warehouse the rows name, in order of first appearance. Warehouse w's rows are
    w.csv's, in the order given, from line 2 (under a header).
    """
    names = list(dict.fromkeys([*warehouses, *(row[0] for row in rows)]))
    return [
        Feed(
            name,
            f"{name}.csv",
            pl.DataFrame(
                {
                    "sku_text": [row[1] for row in rows if row[0] == name],
                    "quantity_text": [
                        None if row[2] is None else str(row[2]) for row in rows if row[0] == name
                    ],
                },
                schema=FEED_SCHEMA,
            ),
            0,
            READ_AT,
            first_line=2,
        )
        for name in names
    ]
