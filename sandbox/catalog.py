"""The sandbox's product catalog: loading it from a file and checking its shape."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

MAX_QUANTITY = 2_147_483_647


def is_valid_quantity(value: object) -> bool:
    """Whether a value is an int (not a bool) in 0..MAX_QUANTITY."""
    return type(value) is int and 0 <= value <= MAX_QUANTITY


def check_products(products: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return a deep copy of the products with each `quantity` filled in, or raise ValueError."""
    if not isinstance(products, list):
        raise ValueError("products must be a list of objects")
    checked: list[dict[str, Any]] = []
    seen: set[str] = set()
    for position, product in enumerate(products):
        if not isinstance(product, dict):
            raise ValueError(f"product #{position} is not an object")
        product_id = product.get("id")
        if not isinstance(product_id, str) or not product_id:
            raise ValueError(f"product #{position} has no string id")
        if product_id in seen:
            raise ValueError(f"product id {product_id} appears twice in the catalog")
        seen.add(product_id)
        quantity = product.get("quantity", 0)
        if not is_valid_quantity(quantity):
            raise ValueError(f"product {product_id} has an invalid quantity: {quantity!r}")
        copied = copy.deepcopy(product)
        copied["quantity"] = quantity
        checked.append(copied)
    return checked


def load_catalog(path: str | Path) -> list[dict[str, Any]]:
    """Read a catalog JSON file of the shape {"products": [...]} and return its products."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    if not isinstance(document, dict) or not isinstance(document.get("products"), list):
        raise ValueError(f"{path}: expected a JSON object with a 'products' list")
    products: list[dict[str, Any]] = document["products"]
    return check_products(products)
