"""Row parsing and the GX warehouse-rows suite, run for real on literal rows."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import polars as pl
import pytest
from builders import feeds
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.checks import gx, suites
from tasks.checks.gx import SUITES_DIR
from tasks.checks.payload import PayloadInvalid, check_payload
from tasks.checks.rows import CATALOG_ROW, SUITE, CheckedRows, check_rows, judge, scan_feeds
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
    reconcile_checked,
)
from tasks.sources.feed import Feed

pytestmark = pytest.mark.fast

CATALOG = pl.DataFrame(
    {
        "id": ["a", "b", "ü"],
        "vendorSku": ["A", "B", "ÜBER-1"],
        "tracked": [True] * 3,
        "backorder": [False] * 3,
    }
)


def feed(*pairs: tuple[str | None, str | None]) -> list[Feed]:
    """One warehouse, east.csv, whose rows start on line 2."""
    return feeds(*[("east", sku, quantity) for sku, quantity in pairs], warehouses=["east"])


def warehouse_feeds(warehouses: Sequence[Sequence[tuple[str | None, str | None]]]) -> list[Feed]:
    """Warehouses w0, w1, ... (w0.csv, ...) with these (SKU, quantity) rows, each from line 2."""
    names = [f"w{n}" for n in range(len(warehouses))]
    rows = [(name, *row) for name, pairs in zip(names, warehouses, strict=True) for row in pairs]
    return feeds(*rows, warehouses=names)


@pytest.mark.parametrize(
    ("text", "quantity"),
    [
        ("12", 12),
        (" 12 ", 12),
        ("12.0", 12),
        ("12.000", 12),
        ("0", 0),
        ("+7", 7),
        ("2147483647", 2147483647),
    ],
)
def test_integer_quantities_count(text, quantity):
    checked = check_rows(feed(("A", text)), CATALOG)
    assert checked.on_hand["quantity"].to_list() == [quantity]
    assert checked.flagged.height == 0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "missing quantity"),
        (None, "missing quantity"),
        ("   ", "missing quantity"),
        ("abc", "quantity is not an integer"),
        ("3.5", "quantity is not an integer"),
        ("12.", "quantity is not an integer"),
        ("1e3", "quantity is not an integer"),
        ("2147483648", "quantity out of range"),
        ("99999999999999999999999", "quantity out of range"),
    ],
)
def test_unusable_quantity_quarantines_the_row_and_holds_the_sku(text, reason):
    checked = check_rows(feed(("A", text), ("A", "5"), ("B", "1")), CATALOG)
    assert checked.flagged.select("line", "reason", "action").rows() == [(2, reason, "hold")]
    assert checked.held_skus.to_list() == ["A"]
    assert checked.on_hand.select("sku", "quantity").sort("sku").rows() == [("A", 5), ("B", 1)]


def test_negative_quantity_is_reported_but_counts():
    checked = check_rows(feed(("A", "-3")), CATALOG)
    assert checked.flagged.select("reason", "action").rows() == [("negative quantity", "report")]
    assert checked.on_hand["quantity"].to_list() == [-3]
    assert checked.held_skus.len() == 0


@pytest.mark.parametrize("sku", ["", "   ", None])
def test_empty_sku_is_quarantined(sku):
    checked = check_rows(feed((sku, "4"), ("A", "1")), CATALOG)
    assert checked.flagged.select("line", "reason", "action").rows() == [
        (2, "empty SKU", "quarantine")
    ]
    assert checked.on_hand["sku"].to_list() == ["A"]


def test_sku_is_trimmed_and_unicode_kept():
    checked = check_rows(feed(("  ÜBER-1 ", "2"), ("A\t", "1")), CATALOG)
    assert checked.flagged.height == 0
    assert sorted(checked.on_hand["sku"]) == ["A", "ÜBER-1"]


def test_unknown_sku_is_quarantined_not_held():
    checked = check_rows(feed(("NOPE", "4"), ("A", "1")), CATALOG)
    assert checked.flagged.select("sku_text", "reason", "action").rows() == [
        ("NOPE", "unknown SKU", "quarantine")
    ]
    assert checked.held_skus.len() == 0


def test_a_row_can_carry_several_reasons():
    checked = check_rows(feed(("NOPE", "-2147483649")), CATALOG)
    reasons = set(checked.flagged["reason"])
    assert reasons == {"quantity out of range", "negative quantity", "unknown SKU"}


def test_flagged_rows_name_file_line_and_raw_values():
    checked = check_rows(feed(("A", "1"), ("B", "x y")), CATALOG)
    row = checked.flagged.row(0, named=True)
    assert (row["source"], row["line"], row["sku_text"], row["quantity_text"]) == (
        "east.csv",
        3,
        "B",
        "x y",
    )


def test_every_suite_file_is_gx_loadable_and_every_expectation_has_a_reason():
    import great_expectations as gx

    for path in SUITES_DIR.glob("*.json"):
        spec = json.loads(path.read_text())
        suite = gx.ExpectationSuite(**spec)
        assert len(suite.expectations) == len(spec["expectations"]) > 0
        assert all(e["meta"].get("reason") for e in spec["expectations"]), path


PAYLOAD_CATALOG = pl.DataFrame({"id": ["a", "b"], "vendorSku": ["A", "B"]})


def payload(ids, quantities):
    return pl.DataFrame(
        {"id": ids, "vendorSku": ["A"] * len(ids), "quantity": quantities},
        schema={"id": pl.String, "vendorSku": pl.String, "quantity": pl.Int64},
    )


def test_payload_suite_passes_a_good_payload():
    check_payload(payload(["a", "b"], [0, 2147483647]), PAYLOAD_CATALOG)


@pytest.mark.parametrize(
    ("ids", "quantities", "reason"),
    [
        (["a", "zzz"], [1, 1], "product id not in the catalog"),
        (["a", "a"], [1, 2], "product id sent twice"),
        (["a"], [-1], "quantity outside 0..2147483647"),
        (["a"], [2147483648], "quantity outside 0..2147483647"),
        (["a", "b"], [1, None], "missing quantity"),
    ],
)
def test_payload_suite_stops_a_bad_payload(ids, quantities, reason):
    with pytest.raises(PayloadInvalid, match=reason):
        check_payload(payload(ids, quantities), PAYLOAD_CATALOG)


def test_payload_suite_stops_a_missing_id_and_a_fractional_quantity():
    with pytest.raises(PayloadInvalid, match="missing product id"):
        check_payload(payload([None, "a"], [1, 1]), PAYLOAD_CATALOG)
    fractional = pl.DataFrame({"id": ["a"], "vendorSku": ["A"], "quantity": [1.5]})
    with pytest.raises(PayloadInvalid, match="quantity is not an integer"):
        check_payload(fractional, PAYLOAD_CATALOG)


QUANTITY_TEXTS = [
    "12",
    " 12 ",
    "12.0",
    "+7",
    "007",
    "-3",
    "0",
    "abc",
    "1e3",
    "",
    None,
    "2147483648",
]
SKU_TEXTS = ["A", " A", "B", "ÜBER-1", "NOPE", "", "  ", None]


def judged_the_long_way(feeds: list[Feed]) -> CheckedRows:
    """check_rows without the plain-row shortcut: every row parsed by the rules, judged by GX."""
    checked = judge(scan_feeds(feeds, shortcut=False), CATALOG)
    assert checked is not None
    return checked


@pytest.mark.slow  # a Great Expectations suite per example: make test runs it
@settings(max_examples=20, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(SKU_TEXTS), st.sampled_from(QUANTITY_TEXTS)), max_size=12
        ),
        min_size=1,
        max_size=3,
    )
)
def test_the_plain_row_shortcut_changes_nothing(warehouses):
    read = warehouse_feeds(warehouses)
    fast, slow = check_rows(read, CATALOG), judged_the_long_way(read)
    assert fast.on_hand.sort("warehouse", "sku").equals(slow.on_hand.sort("warehouse", "sku"))
    assert fast.flagged.equals(slow.flagged)
    assert fast.held_skus.equals(slow.held_skus)
    assert fast.skus == slow.skus


# "A" on two products (held as ambiguous), one product without a SKU, one not tracked
SHARED_CATALOG = pl.DataFrame(
    {
        "id": ["a1", "b", "a2", "ü", "x", "n"],
        "vendorSku": ["A", "B", "A", "ÜBER-1", None, "NOT-TRACKED"],
        "tracked": [True, True, True, True, True, False],
        "backorder": [False] * 6,
    }
)


def plan_by_sku_text(
    good_rows: Sequence[tuple[str, str, int]],
    held_skus: Sequence[str],
    catalog: pl.DataFrame,
    safety_stock: Mapping[str, int],
    absent: Literal["zero", "keep"],
) -> list[tuple[str, str | None, int | None, str, int]]:
    """The rules in plain Python, joining stock to products by SKU text: per catalog row its
    id, vendorSku, quantity (None: not sent), status and row number, as Plan.products has them.

    `good_rows` is (warehouse, SKU, quantity) with the bins already summed, as check_rows gives.
    """
    available: dict[str, int] = {}
    for warehouse, sku, quantity in good_rows:
        available[sku] = available.get(sku, 0) + max(quantity - safety_stock.get(warehouse, 0), 0)
    carriers = Counter(catalog["vendorSku"].drop_nulls())
    plan = []
    for row, (product, sku, tracked) in enumerate(
        catalog.select("id", "vendorSku", "tracked").rows()
    ):
        quantity = None
        if sku is not None and carriers[sku] > 1:
            status = HELD_AMBIGUOUS
        elif not tracked:
            status = NOT_TRACKED
        elif sku is None:
            status = HELD_NO_SKU
        elif sku in held_skus:
            status = HELD_BAD_ROWS
        elif sku in available and available[sku] > MAX_QUANTITY:
            status = HELD_TOO_LARGE
        elif sku in available:
            status, quantity = PUSHED, available[sku]
        elif absent == "zero":
            status, quantity = ZEROED_ABSENT, 0
        else:
            status = KEPT_ABSENT
        plan.append((product, sku, quantity, status, row))
    return plan


@pytest.mark.slow  # a Great Expectations suite per example: make test runs it
@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from([*SKU_TEXTS, "NOT-TRACKED", " B "]),
                st.sampled_from(QUANTITY_TEXTS),
            ),
            max_size=12,
        ),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from(["zero", "keep"]),
)
def test_stock_placed_by_catalog_row_is_stock_joined_by_sku(warehouses, absent):
    """check_rows names each SKU's catalog row; reconcile sums by it, not by the SKU's text."""
    checked = check_rows(warehouse_feeds(warehouses), SHARED_CATALOG)
    known = checked.on_hand.filter(pl.col(CATALOG_ROW).is_not_null())
    assert (SHARED_CATALOG["vendorSku"].gather(known[CATALOG_ROW]) == known["sku"]).all()
    assert (
        checked.on_hand.filter(pl.col(CATALOG_ROW).is_null())["sku"]
        .is_in(SHARED_CATALOG["vendorSku"].drop_nulls().implode())
        .not_()
        .all()
    )
    safety = {"w0": 0, "w1": 3, "w2": 1}
    by_row = reconcile_checked(checked, SHARED_CATALOG, safety, absent, MAX_QUANTITY)
    good_rows = checked.on_hand.select(pl.col("warehouse").cast(pl.String), "sku", "quantity")
    by_text = plan_by_sku_text(
        good_rows.rows(), checked.held_skus.to_list(), SHARED_CATALOG, safety, absent
    )
    assert by_row.products.with_columns(pl.col("status").cast(pl.String)).rows() == by_text


def test_the_suite_decides_even_for_plain_rows(monkeypatch):
    """A stricter suite (at most 10 units a row) flags a quantity polars read as plain."""
    spec = json.loads(json.dumps(gx.load_suite(SUITE)))
    [limit] = [e for e in spec["expectations"] if e["meta"]["reason"] == "quantity out of range"]
    limit["kwargs"]["max_value"] = 10
    monkeypatch.setattr(suites, "load_suite", lambda name: spec if name == SUITE else {})
    checked = check_rows(feed(("A", "20"), ("B", "5")), CATALOG)
    assert checked.flagged.select("line", "reason").rows() == [(2, "quantity out of range")]
    assert checked.on_hand.select("sku", "quantity").rows() == [("B", 5)]
    assert checked.held_skus.to_list() == ["A"]


def test_a_planned_payload_is_checked_against_the_catalog_rows_it_names():
    planned = payload(["a", "b"], [1, 1]).with_columns(
        pl.Series(CATALOG_ROW, [0, 1], dtype=pl.UInt32)
    )
    check_payload(planned, PAYLOAD_CATALOG)
    for rows in ([0, 0], [0, 7], [0, None]):  # another row's id, no such row, none named
        wrong = planned.with_columns(pl.Series(CATALOG_ROW, rows, dtype=pl.UInt32))
        with pytest.raises(PayloadInvalid, match="product id not in the catalog"):
            check_payload(wrong, PAYLOAD_CATALOG)
