"""The delta against what was last pushed, and the dry run's diff lines, on literal frames."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.delta import CHANGE_SCHEMA, diff_lines, plan_changes
from tasks.reconcile import CATALOG_ROW

pytestmark = pytest.mark.fast


def payload(**quantities: int) -> pl.DataFrame:
    """Products named by id; the SKU is the id in capitals."""
    return pl.DataFrame(
        {
            "id": list(quantities),
            "vendorSku": [i.upper() for i in quantities],
            "quantity": list(quantities.values()),
        },
        schema={"id": pl.String, "vendorSku": pl.String, "quantity": pl.Int64},
    )


def last_pushed(**quantities: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": list(quantities), "last_quantity": list(quantities.values())},
        schema={"id": pl.String, "last_quantity": pl.Int64},
    )


def catalog(**platform: int | None) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": list(platform), "platform_quantity": list(platform.values())},
        schema={"id": pl.String, "platform_quantity": pl.Int64},
    )


@pytest.mark.parametrize(
    ("pushed", "platform", "full", "sent", "previous"),
    [
        pytest.param({}, {"a": 4}, False, {"a": 5}, {"a": 4}, id="never pushed: sent; previous is the platform's"),
        pytest.param({}, {"a": None}, False, {"a": 5}, {"a": None}, id="never pushed, platform has nothing"),
        pytest.param({"a": 5}, {"a": 5}, False, {}, {"a": 5}, id="pushed the same: not sent"),
        pytest.param({"a": 5}, {"a": 2}, False, {}, {"a": 5}, id="the platform sold some: still not sent"),
        pytest.param({"a": 7}, {"a": 5}, False, {"a": 5}, {"a": 7}, id="changed: sent; previous is what we pushed"),
        pytest.param({"a": 5}, {"a": 5}, True, {"a": 5}, {"a": 5}, id="full: sent though unchanged"),
        pytest.param({"a": 5}, {}, False, {}, {"a": 5}, id="not in the catalog frame: last pushed still counts"),
    ],
)  # fmt: skip
def test_what_is_sent_and_what_it_was_before(pushed, platform, full, sent, previous):
    changes = plan_changes(payload(a=5), last_pushed(**pushed), catalog(**platform), full)
    assert dict(changes.to_send.select("id", "quantity").iter_rows()) == sent
    assert dict(changes.all.select("id", "previous").iter_rows()) == previous
    assert changes.unchanged == 1 - len(sent)
    assert changes.full is full


def test_a_mixed_payload_is_sent_in_sku_order_and_all_keeps_the_payloads_order():
    changes = plan_changes(
        payload(d=0, b=1, a=2, c=3),  # reconcile sets no order
        last_pushed(a=2, c=9, zz=4),  # zz: pushed once, no longer in the payload
        catalog(a=2, b=7, c=9, d=None),
        full=False,
    )
    assert changes.to_send.schema == pl.Schema(CHANGE_SCHEMA)
    assert changes.to_send.rows() == [("b", "B", 1, 7), ("c", "C", 3, 9), ("d", "D", 0, None)]
    assert changes.all["id"].to_list() == ["d", "b", "a", "c"]
    assert changes.unchanged == 1


def test_a_full_run_sends_everything_in_sku_order_then_id():
    frame = pl.DataFrame(
        {
            "id": ["p3", "p1", "p2", "p0"],
            "vendorSku": ["B", "B", "A", None],
            "quantity": [1, 2, 3, 4],
        }
    )
    changes = plan_changes(frame, last_pushed(), catalog(), full=True)
    assert changes.to_send["id"].to_list() == ["p2", "p1", "p3", "p0"]  # A, B (p1, p3), no SKU


def test_a_planned_payload_takes_the_platform_quantity_of_the_row_it_was_planned_from():
    """By its catalog row where that row holds its id; by its id where it does not."""
    shop = catalog(a=4, b=None, c=9)
    planned = payload(c=1, a=2, b=3).with_columns(pl.Series(CATALOG_ROW, [2, 0, 1], pl.UInt32))
    by_row = plan_changes(planned, last_pushed(), shop, full=False)
    assert by_row.all.select("id", "previous").rows() == [("c", 9), ("a", 4), ("b", None)]
    moved = planned.with_columns(pl.Series(CATALOG_ROW, [0, 1, 2], pl.UInt32))  # not theirs
    by_id = plan_changes(moved, last_pushed(), shop, full=False)
    assert by_id.all.select("id", "previous").rows() == [("c", 9), ("a", 4), ("b", None)]
    beyond = planned.with_columns(pl.Series(CATALOG_ROW, [7, 0, 1], pl.UInt32))
    assert plan_changes(beyond, last_pushed(), shop, full=False).all.equals(by_row.all)


QUANTITY = st.integers(0, 50)


@settings(max_examples=100, deadline=None)
@given(
    new=st.dictionaries(st.sampled_from("abcdefgh"), QUANTITY, min_size=1),
    old=st.dictionaries(st.sampled_from("abcdefghij"), QUANTITY),
    full=st.booleans(),
)
def test_sent_plus_unchanged_is_the_payload_and_only_changes_are_sent(new, old, full):
    changes = plan_changes(payload(**new), last_pushed(**old), catalog(), full)
    sent = dict(changes.to_send.select("id", "quantity").iter_rows())
    assert len(sent) + changes.unchanged == len(new)
    assert sent == (new if full else {i: q for i, q in new.items() if old.get(i) != q})


def changes(*rows: tuple[str, int, int | None]) -> pl.DataFrame:
    """id, vendorSku (the id in capitals), quantity, previous."""
    return pl.DataFrame(
        [(i, i.upper(), q, p) for i, q, p in rows], schema=CHANGE_SCHEMA, orient="row"
    )


def test_diff_lines_show_the_biggest_changes_first_whatever_their_sign():
    rows = changes(("a", 5, 4), ("b", 0, 30), ("c", 12, None), ("d", 60, 50))
    assert diff_lines(rows, limit=10) == [
        "B (b): 30 → 0",
        "C (c): — → 12",  # never pushed: the change is counted from 0
        "D (d): 50 → 60",
        "A (a): 4 → 5",
    ]


@pytest.mark.parametrize(("limit", "shown"), [(0, 0), (2, 2), (9, 3)])
def test_diff_lines_stop_at_the_limit(limit, shown):
    rows = changes(("a", 1, 0), ("b", 2, 0), ("c", 3, 0))
    lines = diff_lines(rows, limit)
    assert len(lines) == shown
    assert lines == ["C (c): 0 → 3", "B (b): 0 → 2", "A (a): 0 → 1"][:shown]


def test_diff_lines_of_no_change_are_empty():
    assert diff_lines(changes(), limit=20) == []
