"""The reconciliation rules on tiny literal rows, through the flow's own path: no Prefect, no HTTP.

Each test writes warehouse rows as a feed would give them, runs check_rows (the GX rows
suite: bins summed, bad rows held) and then reconcile_checked, as the flow's check-rows and
reconcile tasks do, with the platform's largest quantity unless a test says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import polars as pl
import pytest
from builders import FeedRow, feeds
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.checks.rows import check_rows
from tasks.lightspeed.chunks import chunk_body, split_into_chunks
from tasks.lightspeed.contract import MAX_QUANTITY
from tasks.reconcile import (
    HELD_AMBIGUOUS,
    HELD_BAD_ROWS,
    HELD_NO_SKU,
    HELD_TOO_LARGE,
    KEPT_ABSENT,
    NOT_TRACKED,
    PUSHED,
    ZEROED_ABSENT,
    Plan,
    reconcile_checked,
)

pytestmark = pytest.mark.fast


def catalog(*entries: tuple[str, str | None, bool]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [e[0] for e in entries],
            "vendorSku": [e[1] for e in entries],
            "tracked": [e[2] for e in entries],
            "backorder": [False] * len(entries),
        },
        schema={
            "id": pl.String,
            "vendorSku": pl.String,
            "tracked": pl.Boolean,
            "backorder": pl.Boolean,
        },
    )


def reconciled(
    rows: Sequence[FeedRow],
    products: pl.DataFrame,
    safety_stock: Mapping[str, int],
    absent: Literal["zero", "keep"],
    *,
    warehouses: Sequence[str] = (),
    max_quantity: int = MAX_QUANTITY,
) -> Plan:
    """The plan the flow makes from these warehouse rows: check_rows, then reconcile_checked."""
    checked = check_rows(feeds(*rows, warehouses=warehouses), products)
    return reconcile_checked(checked, products, safety_stock, absent, max_quantity)


def outcome(plan: Plan, product_id: str) -> tuple[int | None, str]:
    row = plan.products.filter(pl.col("id") == product_id).row(0, named=True)
    return row["quantity"], row["status"]


def test_bins_are_summed_per_warehouse_and_warehouses_added():
    plan = reconciled(
        [("east", "A", 3), ("east", "A", 4), ("west", "A", 10)],
        catalog(("a", "A", True)),
        {"east": 0, "west": 0},
        "zero",
    )
    assert outcome(plan, "a") == (17, PUSHED)


@pytest.mark.parametrize(
    ("east_rows", "safety", "expected"),
    [
        ([5], 2, 3),  # safety stock held back
        ([1], 2, 0),  # floored at zero, never negative
        ([5, -4], 0, 1),  # a negative row takes part in the sum
        ([-9], 0, 0),  # a negative sum contributes zero
        ([5, 5], 4, 6),  # safety stock applies once per SKU per warehouse, after the bins
    ],
)
def test_safety_stock_and_negative_rows(east_rows, safety, expected):
    plan = reconciled(
        [*[("east", "A", q) for q in east_rows], ("west", "A", 0)],
        catalog(("a", "A", True)),
        {"east": safety, "west": 0},
        "zero",
    )
    assert outcome(plan, "a") == (expected, PUSHED)


def test_one_warehouse_cannot_cancel_another():
    """East is short (negative after reserve); west's stock is not reduced by it."""
    plan = reconciled(
        [("east", "A", -5), ("west", "A", 4)],
        catalog(("a", "A", True)),
        {"east": 0, "west": 0},
        "zero",
    )
    assert outcome(plan, "a") == (4, PUSHED)


def test_ambiguous_sku_holds_every_product_that_carries_it():
    plan = reconciled(
        [("east", "D", 5)],
        catalog(("d1", "D", True), ("d2", "D", True), ("e", "E", True)),
        {"east": 0},
        "zero",
    )
    assert outcome(plan, "d1") == (None, HELD_AMBIGUOUS)
    assert outcome(plan, "d2") == (None, HELD_AMBIGUOUS)
    assert plan.payload["id"].to_list() == ["e"]


def test_untracked_products_are_never_sent():
    plan = reconciled([("east", "G", 100)], catalog(("g", "G", False)), {"east": 0}, "zero")
    assert outcome(plan, "g") == (None, NOT_TRACKED)
    assert plan.payload.height == 0


@pytest.mark.parametrize(
    ("absent", "expected"), [("zero", (0, ZEROED_ABSENT)), ("keep", (None, KEPT_ABSENT))]
)
def test_tracked_product_no_warehouse_lists(absent, expected):
    plan = reconciled(
        [("east", "A", 1)],
        catalog(("a", "A", True), ("p", "P", True)),
        {"east": 0},
        absent,
    )
    assert outcome(plan, "p") == expected


def test_held_sku_pushes_nothing_even_with_good_rows():
    """H has a good row (5) and one whose quantity is unusable: check_rows holds H."""
    products = catalog(("h", "H", True))
    checked = check_rows(feeds(("east", "H", 5), ("east", "H", "abc")), products)
    assert checked.held_skus.to_list() == ["H"]
    assert checked.on_hand.select("sku", "quantity").rows() == [("H", 5)]
    plan = reconcile_checked(checked, products, {"east": 0}, "zero", MAX_QUANTITY)
    assert outcome(plan, "h") == (None, HELD_BAD_ROWS)


def test_product_without_sku_is_held_not_zeroed():
    plan = reconciled(
        [("east", "A", 1)],
        catalog(("a", "A", True), ("n", None, True)),
        {"east": 0},
        "zero",
    )
    assert outcome(plan, "n") == (None, HELD_NO_SKU)


def test_total_above_int32_is_held():
    """Each row is within the platform's largest quantity (check_rows flags none); their sum is
    not, and reconcile holds it rather than send it."""
    products = catalog(("a", "A", True))
    checked = check_rows(
        feeds(("east", "A", 2_000_000_000), ("west", "A", 2_000_000_000)), products
    )
    assert checked.flagged.height == 0 and checked.held_skus.len() == 0
    plan = reconcile_checked(checked, products, {"east": 0, "west": 0}, "zero", MAX_QUANTITY)
    assert outcome(plan, "a") == (None, HELD_TOO_LARGE)


def test_counts_cover_every_product_once():
    cat = catalog(
        ("a", "A", True), ("b", "B", False), ("c", "C", True), ("d1", "D", True), ("d2", "D", True)
    )
    plan = reconciled([("east", "A", 2)], cat, {"east": 0}, "zero")
    counts = plan.counts()
    assert sum(counts.values()) == cat.height
    assert counts[PUSHED] == 1 and counts[ZEROED_ABSENT] == 1 and counts[NOT_TRACKED] == 1
    assert counts[HELD_AMBIGUOUS] == 2


def available_by_hand(
    quantities: Sequence[tuple[str, str, int]], safety_stock: Mapping[str, int]
) -> dict[str, int]:
    """The rule in plain Python: bins summed per warehouse and SKU, less that warehouse's
    safety stock, floored at 0, then warehouses added per SKU (only SKUs some row lists)."""
    bins: dict[tuple[str, str], int] = {}
    for warehouse, sku, quantity in quantities:
        bins[warehouse, sku] = bins.get((warehouse, sku), 0) + quantity
    available: dict[str, int] = {}
    for (warehouse, sku), total in bins.items():
        available[sku] = available.get(sku, 0) + max(total - safety_stock[warehouse], 0)
    return available


# each example runs the GX rows suite: make test runs it, make test-fast leaves it out, and
# fewer examples than hypothesis's default 100 suffice for strategies this small
@pytest.mark.slow
@settings(max_examples=25)
@given(
    quantities=st.lists(
        st.tuples(st.sampled_from(["e", "w"]), st.sampled_from("ABCDE"), st.integers(-50, 50)),
        max_size=60,
    ),
    safety=st.integers(0, 10),
)
def test_quantities_are_never_negative_and_match_a_plain_sum(quantities, safety):
    safety_stock = {"e": safety, "w": safety}
    plan = reconciled(
        quantities,
        catalog(*[(sku.lower(), sku, True) for sku in "ABCDE"]),
        safety_stock,
        "keep",
        warehouses=("e", "w"),
    )
    expected = available_by_hand(quantities, safety_stock)
    products = plan.products.select("vendorSku", "quantity", pl.col("status").cast(pl.String))
    pushed = {sku: q for sku, q, status in products.rows() if status == PUSHED}
    assert pushed == expected
    assert {status for sku, _, status in products.rows() if sku not in expected} <= {KEPT_ABSENT}
    assert (plan.products["quantity"].drop_nulls() >= 0).all()


@given(n=st.integers(0, 2000), size=st.integers(1, 700))
def test_chunks_cover_the_payload_exactly_once(n, size):
    payload = pl.DataFrame(
        {
            "id": [f"id{i}" for i in range(n)],
            "vendorSku": [f"S{i}" for i in range(n)],
            "quantity": list(range(n)),
        }
    )
    chunks = split_into_chunks(payload, size)
    assert all(1 <= c.height <= size for c in chunks)
    assert pl.concat(chunks).equals(payload) if chunks else n == 0


def test_chunk_body_is_the_platform_shape():
    import json

    body = json.loads(chunk_body(pl.DataFrame({"id": ["x"], "vendorSku": ["S"], "quantity": [3]})))
    assert body == {"products": [{"id": "x", "quantity": 3}]}
