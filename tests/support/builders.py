"""Small builders for test data: product dicts, stable ids, config blocks."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tasks.config.secrets import resolve_state
from tasks.config.settings import load_settings
from tasks.state.store import StateStore

TOKEN = "test-token"


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
