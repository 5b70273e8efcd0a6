"""What a run reports: summarize over literal stage results, and the text a user reads."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from tasks.checks.rows import CheckedRows
from tasks.delta import CHANGE_SCHEMA, Changes
from tasks.guards import ChangeGuard
from tasks.lightspeed.catalog import CatalogRead
from tasks.lightspeed.load import ChunkFailure, ChunkResult, LoadOutcome
from tasks.lightspeed.read_back import ReadBack
from tasks.reconcile import HELD_BAD_ROWS, NOT_TRACKED, PUSHED, STATUSES, ZEROED_ABSENT, Plan
from tasks.report.summary import RunSummary, WarehouseLine, summarize
from tasks.sources.extract import Extracted
from tasks.sources.feed import FEED_SCHEMA, Feed

pytestmark = pytest.mark.fast

MONDAY = datetime(2026, 11, 23, 6, 30, tzinfo=UTC)


def feed(warehouse: str, source: str, skus: list[str | None], size: int) -> Feed:
    rows = pl.DataFrame({"sku_text": skus, "quantity_text": "1"}, schema=FEED_SCHEMA)
    return Feed(warehouse, source, rows, size, MONDAY, first_line=2)


EXTRACTED = Extracted(
    feeds=[
        feed("east", "east.csv", ["A", " A ", "B", None], 608),  # A twice, once padded
        feed("north", "north.parquet", ["C"], 2048),
    ],
    seconds={"east": 0.3012},  # north: not timed
)
CHECKED = CheckedRows(
    stock=pl.LazyFrame(),
    totals=0,
    flagged=pl.DataFrame(
        [
            (1, "negative quantity", "report"),
            (2, "quantity is not an integer", "hold"),
            (2, "unknown SKU", "quarantine"),  # one row, two reasons: it drops once
            (3, "empty SKU", "quarantine"),
        ],
        schema={"row_id": pl.UInt32, "reason": pl.String, "action": pl.String},
        orient="row",
    ),
    held_skus=pl.Series(["B"]),
    skus={"east": 2, "north": 1},  # what check_rows counts: east lists A (twice) and B
)
PLAN = Plan(
    pl.DataFrame(
        {
            "id": ["a", "b", "c", "d", "u", "h"],
            "vendorSku": ["A", "B", "C", "D", "U", "H"],
            "quantity": [5, 1, 3, 0, None, None],
            "status": [PUSHED, PUSHED, PUSHED, ZEROED_ABSENT, NOT_TRACKED, HELD_BAD_ROWS],
        }
    )
)


def change_rows(*rows: tuple[str, int, int | None]) -> pl.DataFrame:
    return pl.DataFrame(
        [(i, i.upper(), q, p) for i, q, p in rows], schema=CHANGE_SCHEMA, orient="row"
    )


TO_SEND = change_rows(("a", 5, 9), ("b", 1, None), ("c", 3, 3), ("d", 0, 20))
CHANGES = Changes(all=TO_SEND, to_send=TO_SEND, unchanged=2, full=False)
QUIET_GUARD = ChangeGuard(3, 0, 32, 30, 0.2, 0.5, change_rows())
TRIPPED_GUARD = replace(QUIET_GUARD, zeroed=1)  # a third of in-stock products to zero


def outcome() -> LoadOutcome:
    """Chunk 1 landed one product (the API rejected the other) after a retry; chunk 2 failed."""
    return LoadOutcome(
        chunks=2,
        accepted=[
            ChunkResult(1, "1/2 A…B (2 products)", 1, 2, {"b": "quantity too large"}),
        ],
        failed=[
            ChunkFailure(
                2,
                "2/2 C…D (2 products)",
                "PUT /inventory: HTTP 503 busy",
                503,
                6,
                TO_SEND.filter(pl.col("id").is_in(["c", "d"])).select(
                    "id", "vendorSku", "quantity"
                ),
            )
        ],
        requests=2,
    )


DRIFT = pl.DataFrame(
    [("a", "A", 5, 3), ("x", "X", 1, None)],
    schema={"id": pl.String, "vendorSku": pl.String, "pushed": pl.Int64, "now": pl.Int64},
    orient="row",
)


READ_BACK = ReadBack(
    DRIFT,
    pages=2,
    products_read=40,
    sent_checked=1,
    whole_catalog=False,
    retries=1,
    waited_seconds=0.5,
)


def kept_catalog() -> CatalogRead:
    """The six products of PLAN, kept from a refresh two hours ago."""
    return CatalogRead(
        frame=PLAN.products.select("id", "vendorSku"),
        origin="kept from the refresh 2.0h ago (0 GET)",
        refreshed_at=datetime.now(UTC) - timedelta(hours=2),
        waited_seconds=0.25,
        notes=("catalog: 1 product no longer listed",),
    )


def real_run(**overrides) -> RunSummary:
    arguments = {
        "outcome": outcome(),
        "chunk_size": 2,
        "request_size": 500,
        "read_back": READ_BACK,
        "notes": ["west: not read in this run; used its last good feed instead"],
        "guard": QUIET_GUARD,
        "catalog": kept_catalog(),
        "audited": 0.25,
    } | overrides
    return summarize("brave-otter", False, EXTRACTED, CHECKED, PLAN, CHANGES, **arguments)


def test_summarize_gathers_the_counts_of_every_stage():
    summary = real_run()
    assert summary.warehouses == [
        WarehouseLine("east", "east.csv", 4, 2, 608, 0.301, "2026-11-23T06:30:00+00:00"),
        WarehouseLine("north", "north.parquet", 1, 1, 2048, 0.0, "2026-11-23T06:30:00+00:00"),
    ]
    assert summary.rows_read == 5
    assert summary.rows_flagged == {
        "empty SKU": 1,
        "negative quantity": 1,
        "quantity is not an integer": 1,
        "unknown SKU": 1,
    }
    assert (summary.rows_dropped, summary.skus_held) == (2, 1)
    assert summary.products == {status: 0 for status in STATUSES} | {
        PUSHED: 3,
        ZEROED_ABSENT: 1,
        NOT_TRACKED: 1,
        HELD_BAD_ROWS: 1,
    }
    assert (summary.to_send, summary.unchanged, summary.full, summary.chunks) == (4, 2, False, 2)
    assert (summary.chunks_accepted, summary.chunks_failed) == (1, 1)
    assert (summary.attempts, summary.retries, summary.requests) == (8, 6, 2)
    assert (summary.products_sent, summary.products_not_landed) == (1, 2)
    assert summary.rejected == {"b": "quantity too large"}
    assert summary.drifted == [
        "A (a): pushed 5, platform has 3",
        "X (x): pushed 1, platform has nothing",
    ]
    assert summary.failures == [
        "chunk 2/2 C…D (2 products) after 6 attempt(s): PUT /inventory: HTTP 503 busy; "
        "did not land: C, D"
    ]
    assert summary.notes == [
        "west: not read in this run; used its last good feed instead",
        "catalog: 1 product no longer listed",
        "1 row(s) name a SKU the catalog does not know; it was refreshed 2.0h ago, so a product "
        "added since gets its quantity after the next refresh (--refresh-catalog refreshes now)",
    ]
    assert summary.catalog == "6 product(s), kept from the refresh 2.0h ago (0 GET)"
    assert summary.read_back == (
        "2 page(s), 40 product(s) compared (1 of the 1 sent this run), 1 GET(s) retried; "
        "25% of the catalog audited in the last 24 h"
    )
    assert summary.waited_seconds == 0.75
    assert (summary.diff, summary.diff_totals) == ([], "")
    assert not summary.ok


RENDERED = """\
inventory-sync run brave-otter
Catalog: 6 product(s), kept from the refresh 2.0h ago (0 GET)
Read 5 row(s) from 2 warehouse(s):
  east                     4 rows        2 SKUs     608 B   0.30s  east.csv (modified 2026-11-23T06:30:00+00:00)
  north                    1 rows        1 SKUs    2.0 kB   0.00s  north.parquet (modified 2026-11-23T06:30:00+00:00)
Flagged rows (2 did not count, 1 SKU(s) held):
  empty SKU                                1
  negative quantity                        1
  quantity is not an integer               1
  unknown SKU                              1
Products:
  set from the warehouses                                  3
  set to 0: in no warehouse                                1
  not tracked                                              1
  held: a warehouse row had an unusable quantity           1
Changed since the last push: 4; unchanged (not sent): 2.
Note: west: not read in this run; used its last good feed instead
Note: catalog: 1 product no longer listed
Note: 1 row(s) name a SKU the catalog does not know; it was refreshed 2.0h ago, so a product added since gets its quantity after the next refresh (--refresh-catalog refreshes now)
Sent 1 of 4 product(s): 1 of 2 chunk(s) accepted, 8 attempt(s) (6 retried); 2 PUT request(s) of up to 2 products.
Waited 0.8s for room in the platform's rate limit.
Read-back: 2 page(s), 40 product(s) compared (1 of the 1 sent this run), 1 GET(s) retried; 25% of the catalog audited in the last 24 h
Rejected by the API and quarantined for this run: 1
  b: quantity too large
Drift after the load (re-sent next run): 2
  A (a): pushed 5, platform has 3
  X (x): pushed 1, platform has nothing
  FAILED chunk 2/2 C…D (2 products) after 6 attempt(s): PUT /inventory: HTTP 503 busy; did not land: C, D
Quarantine report: reports/quarantine.csv
Result: FAILED: 2 product(s) did not land"""


def test_a_failed_run_renders_on_one_screen():
    summary = real_run()
    summary.files = {"Quarantine report": "reports/quarantine.csv"}
    assert summary.render() == RENDERED


def test_a_dry_run_shows_the_biggest_changes_and_what_the_guard_would_ask():
    summary = summarize(
        "calm-heron", True, EXTRACTED, CHECKED, PLAN, CHANGES, None,
        chunk_size=3, request_size=500, read_back=None, notes=[], guard=TRIPPED_GUARD,
        diff_lines_shown=2,
    )  # fmt: skip
    assert summary.diff == ["D (d): 20 → 0", "A (a): 9 → 5"]
    assert summary.diff_totals == "4 product(s) change; their units go from 32 to 9"
    assert summary.notes == [
        "change guard: 1 of 3 in-stock products to zero, units 32 → 30 "
        "(a real run would ask for approval)"
    ]
    text = summary.render().splitlines()
    assert text[0] == "inventory-sync run calm-heron (dry run: nothing sent)"
    assert text[-7:] == [
        "Note: change guard: 1 of 3 in-stock products to zero, units 32 → 30 "
        "(a real run would ask for approval)",
        "Would send 4 product(s) in 2 chunk(s) (task runs), in PUT requests of up to 3 products.",
        "Biggest changes (first 2; old → new):",
        "  D (d): 20 → 0",
        "  A (a): 9 → 5",
        "  4 product(s) change; their units go from 32 to 9",
        "Result: OK",
    ]


def test_a_full_run_that_was_approved_and_could_not_read_back():
    full = replace(CHANGES, unchanged=0, full=True)
    summary = summarize(
        "bold-lynx", False, EXTRACTED, CHECKED, PLAN, full, LoadOutcome(chunks=1),
        chunk_size=500, request_size=500, read_back="read-back failed: HTTP 503", notes=[],
        guard=TRIPPED_GUARD,
    )  # fmt: skip
    lines = summary.render().splitlines()
    assert "Full run: all 4 product(s) to send, changed or not." in lines
    assert "Note: read-back failed: HTTP 503" in lines
    assert "Note: change guard: 1 of 3 in-stock products to zero, units 32 → 30 (approved)" in lines
    assert summary.chunks == 1 and summary.drifted == []
    assert lines[-1] == "Result: OK"


def bare(**fields) -> RunSummary:
    """A summary with nothing in it but `fields`."""
    empty = {
        "run": "r",
        "dry_run": False,
        "warehouses": [],
        "rows_read": 0,
        "rows_flagged": {},
        "rows_dropped": 0,
        "skus_held": 0,
        "products": {},
        "to_send": 0,
    }
    return RunSummary(**(empty | fields))


@pytest.mark.parametrize(
    ("fields", "headline"),
    [
        (
            {},
            "OK: sent 0 of 0 product(s) in 0 chunk(s) (task runs); 0 row flag(s), 0 SKU(s) held, "
            "0 rejected by the API, 0 product(s) did not land",
        ),
        (
            {"dry_run": True, "to_send": 7, "chunks": 2, "rows_flagged": {"x": 2, "y": 1}},
            "OK: would send 7 product(s) in 2 chunk(s) (task runs); 3 row flag(s), 0 SKU(s) held, "
            "0 rejected by the API, 0 product(s) did not land",
        ),
        (
            {"to_send": 9, "chunks": 3, "chunks_failed": 1, "products_sent": 6, "skus_held": 2,
             "products_not_landed": 3, "rejected": {"a": "bad"}},
            "FAILED: sent 6 of 9 product(s) in 3 chunk(s) (task runs); 0 row flag(s), 2 SKU(s) held, "
            "1 rejected by the API, 3 product(s) did not land",
        ),
    ],
)  # fmt: skip
def test_the_headline_is_the_verdict_and_the_main_counts(fields, headline):
    assert bare(**fields).headline() == headline


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 kB"),
        (1536, "1.5 kB"),
        (5 << 20, "5.0 MB"),
        (3 << 30, "3.0 GB"),
    ],
)
def test_feed_sizes_are_shown_in_readable_units(size, shown):
    line = WarehouseLine("w", "w.csv", 1, 1, size, 0.0, "t")
    assert f" {shown}   0.00s  w.csv" in bare(warehouses=[line]).render().splitlines()[2]


def test_a_run_with_nothing_flagged_says_so():
    lines = bare().render().splitlines()
    assert lines[1:4] == ["Read 0 row(s) from 0 warehouse(s):", "Flagged rows: none", "Products:"]
