"""The reconciliation rules on tiny literal frames: no Prefect, no HTTP."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.lightspeed.load import chunk_body, split_into_chunks
from tasks.reconcile import (
    HELD_AMBIGUOUS,
    HELD_BAD_ROWS,
    HELD_NO_SKU,
    HELD_TOO_LARGE,
    KEPT_ABSENT,
    NOT_TRACKED,
    PUSHED,
    ZEROED_ABSENT,
    reconcile,
    stock_by_sku,
)

pytestmark = pytest.mark.fast


def rows(*triples: tuple[str, str, int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "warehouse": [t[0] for t in triples],
            "sku": [t[1] for t in triples],
            "quantity": [t[2] for t in triples],
        },
        schema={"warehouse": pl.String, "sku": pl.String, "quantity": pl.Int64},
    )


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


NO_HELD = pl.Series("sku", [], pl.String)


def outcome(plan, product_id: str) -> tuple[int | None, str]:
    row = plan.products.filter(pl.col("id") == product_id).row(0, named=True)
    return row["quantity"], row["status"]


def test_bins_are_summed_per_warehouse_and_warehouses_added():
    plan = reconcile(
        rows(("east", "A", 3), ("east", "A", 4), ("west", "A", 10)),
        NO_HELD,
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
    plan = reconcile(
        rows(*[("east", "A", q) for q in east_rows], ("west", "A", 0)),
        NO_HELD,
        catalog(("a", "A", True)),
        {"east": safety, "west": 0},
        "zero",
    )
    assert outcome(plan, "a") == (expected, PUSHED)


def test_one_warehouse_cannot_cancel_another():
    """East is short (negative after reserve); west's stock is not reduced by it."""
    plan = reconcile(
        rows(("east", "A", -5), ("west", "A", 4)),
        NO_HELD,
        catalog(("a", "A", True)),
        {"east": 0, "west": 0},
        "zero",
    )
    assert outcome(plan, "a") == (4, PUSHED)


def test_ambiguous_sku_holds_every_product_that_carries_it():
    plan = reconcile(
        rows(("east", "D", 5)),
        NO_HELD,
        catalog(("d1", "D", True), ("d2", "D", True), ("e", "E", True)),
        {"east": 0},
        "zero",
    )
    assert outcome(plan, "d1") == (None, HELD_AMBIGUOUS)
    assert outcome(plan, "d2") == (None, HELD_AMBIGUOUS)
    assert plan.payload["id"].to_list() == ["e"]


def test_untracked_products_are_never_sent():
    plan = reconcile(
        rows(("east", "G", 100)), NO_HELD, catalog(("g", "G", False)), {"east": 0}, "zero"
    )
    assert outcome(plan, "g") == (None, NOT_TRACKED)
    assert plan.payload.height == 0


@pytest.mark.parametrize(
    ("absent", "expected"), [("zero", (0, ZEROED_ABSENT)), ("keep", (None, KEPT_ABSENT))]
)
def test_tracked_product_no_warehouse_lists(absent, expected):
    plan = reconcile(
        rows(("east", "A", 1)),
        NO_HELD,
        catalog(("a", "A", True), ("p", "P", True)),
        {"east": 0},
        absent,
    )
    assert outcome(plan, "p") == expected


def test_held_sku_pushes_nothing_even_with_good_rows():
    plan = reconcile(
        rows(("east", "H", 5)), pl.Series(["H"]), catalog(("h", "H", True)), {"east": 0}, "zero"
    )
    assert outcome(plan, "h") == (None, HELD_BAD_ROWS)


def test_product_without_sku_is_held_not_zeroed():
    plan = reconcile(
        rows(("east", "A", 1)),
        NO_HELD,
        catalog(("a", "A", True), ("n", None, True)),
        {"east": 0},
        "zero",
    )
    assert outcome(plan, "n") == (None, HELD_NO_SKU)


def test_total_above_int32_is_held():
    plan = reconcile(
        rows(("east", "A", 2_000_000_000), ("west", "A", 2_000_000_000)),
        NO_HELD,
        catalog(("a", "A", True)),
        {"east": 0, "west": 0},
        "zero",
    )
    assert outcome(plan, "a") == (None, HELD_TOO_LARGE)


def test_counts_cover_every_product_once():
    cat = catalog(
        ("a", "A", True), ("b", "B", False), ("c", "C", True), ("d1", "D", True), ("d2", "D", True)
    )
    plan = reconcile(rows(("east", "A", 2)), NO_HELD, cat, {"east": 0}, "zero")
    counts = plan.counts()
    assert sum(counts.values()) == cat.height
    assert counts[PUSHED] == 1 and counts[ZEROED_ABSENT] == 1 and counts[NOT_TRACKED] == 1
    assert counts[HELD_AMBIGUOUS] == 2


@given(
    quantities=st.lists(
        st.tuples(st.sampled_from(["e", "w"]), st.sampled_from("ABCDE"), st.integers(-50, 50)),
        max_size=60,
    ),
    safety=st.integers(0, 10),
)
def test_quantities_are_never_negative_and_match_a_plain_sum(quantities, safety):
    frame = rows(*quantities)
    stock = stock_by_sku(frame, {"e": safety, "w": safety})
    expected: dict[str, int] = {}
    for sku in "ABCDE":
        per = [sum(q for w, s, q in quantities if w == wh and s == sku) for wh in ("e", "w")]
        listed = [wh for wh in ("e", "w") if any(w == wh and s == sku for w, s, _ in quantities)]
        if listed:
            expected[sku] = sum(
                max(per[i] - safety, 0) for i, wh in enumerate(("e", "w")) if wh in listed
            )
    assert dict(stock.iter_rows()) == expected
    assert (stock["available"] >= 0).all()


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
