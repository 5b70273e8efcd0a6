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


def check_products(
    products: list[dict[str, Any]], where: str = "the catalog"
) -> list[dict[str, Any]]:
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
            raise ValueError(f"product id {product_id} appears twice in {where}")
        seen.add(product_id)
        quantity = product.get("quantity", 0)
        if not is_valid_quantity(quantity):
            raise ValueError(f"product {product_id} has an invalid quantity: {quantity!r}")
        copied = copy.deepcopy(product)
        copied["quantity"] = quantity
        checked.append(copied)
    return checked


def merge_products(
    current: list[dict[str, Any]], upsert: list[dict[str, Any]], remove: list[str]
) -> list[dict[str, Any]]:
    """The catalog after adding or replacing `upsert` by id and deleting `remove`, or ValueError.

    A replaced product keeps its position, and its quantity unless the new object has one; a new
    product goes at the end. `current` is not changed; its untouched products are reused as is.
    """
    if not isinstance(upsert, list):
        raise ValueError("upsert must be a list of product objects")
    try:
        incoming = check_products(upsert, "upsert")
    except ValueError as problem:
        raise ValueError(f"upsert: {problem}") from None
    removing = _checked_removals(current, remove)
    both = sorted(removing.intersection(product["id"] for product in incoming))
    if both:
        raise ValueError(f"product ids both upserted and removed: {', '.join(both)}")
    quantities = {product["id"]: product["quantity"] for product in current}
    for product, given in zip(incoming, upsert, strict=True):
        if "quantity" not in given and product["id"] in quantities:
            product["quantity"] = quantities[product["id"]]
    replacing = {product["id"]: product for product in incoming}
    merged = [
        replacing.get(product["id"], product)
        for product in current
        if product["id"] not in removing
    ]
    merged.extend(product for product in incoming if product["id"] not in quantities)
    return merged


def _checked_removals(current: list[dict[str, Any]], remove: list[str]) -> set[str]:
    """The ids to remove, each a known product named once, or raise ValueError."""
    if not isinstance(remove, list) or not all(isinstance(item, str) for item in remove):
        raise ValueError("remove must be a list of product id strings")
    if len(set(remove)) < len(remove):
        raise ValueError("remove names a product id more than once")
    known = {product["id"] for product in current}
    unknown = [product_id for product_id in remove if product_id not in known]
    if unknown:
        raise ValueError(f"cannot remove unknown product ids: {', '.join(unknown)}")
    return set(remove)


def load_catalog(path: str | Path) -> list[dict[str, Any]]:
    """Read a catalog JSON file of the shape {"products": [...]} and return its products."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    if not isinstance(document, dict) or not isinstance(document.get("products"), list):
        raise ValueError(f"{path}: expected a JSON object with a 'products' list")
    products: list[dict[str, Any]] = document["products"]
    return check_products(products)
