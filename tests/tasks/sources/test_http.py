"""WMS HTTP APIs against a real server on loopback: each pagination style, retries, 4xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import SecretStr
from wms_server import API_KEY, WmsServer

from tasks.sources.extract import Extracted, ExtractFailed, extract_all
from tasks.sources.feed import WarehouseUnavailable, WarehouseUnreadable
from tasks.sources.http import HttpWarehouse, probe_http, read_http_feed

KEY = {"auth_value": SecretStr(API_KEY)}
RECORDS = [
    {"item": {"sku": "A"}, "stock": {"available": 5}},
    {"item": {"sku": "B"}, "stock": {"available": 12.0}},
    {"item": {"sku": "C"}, "stock": {"available": None}},  # null stays null: held by the checks
    {"item": {"sku": "D"}, "stock": {}},  # absent too
    {"item": {"sku": 42}, "stock": {"available": " 7 "}},
]
STYLES = {
    "page": {
        "path": "stock/paged",
        "pagination": "page",
        "records_path": "data.items",
        "page_size_param": "per_page",
        "page_size": 2,
    },
    "cursor": {
        "path": "stock/cursor",
        "pagination": "cursor",
        "records_path": "items",
        "cursor_path": "meta.next_cursor",
    },
    "next": {
        "path": "stock/linked",
        "pagination": "next",
        "records_path": "results",
        "next_path": "links.next",
    },
}


@pytest.fixture
def wms() -> Iterator[WmsServer]:
    with WmsServer(RECORDS, page_size=2) as server:
        yield server


def warehouse(wms: WmsServer, style: str = "cursor", **extra: object) -> HttpWarehouse:
    fields: dict[str, object] = {
        "name": "wms",
        "kind": "http",
        "base_url": wms.url,
        "auth_header": "X-Api-Key",
        "auth_value": {"env": "WMS_KEY"},
        "sku_column": "item.sku",
        "quantity_column": "stock.available",
        "timeout_seconds": 5,
        "retry_backoff_seconds": 0,
    }
    return HttpWarehouse.model_validate(fields | STYLES[style] | extra)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_each_pagination_style_reads_every_record_once_as_text(wms, style):
    feed = read_http_feed(warehouse(wms, style), KEY)
    assert feed.numbered().select("line", "sku_text", "quantity_text").rows() == [
        (1, "A", "5"),
        (2, "B", "12.0"),  # the number as the server wrote it, not re-rendered
        (3, "C", None),
        (4, "D", None),
        (5, "42", " 7 "),
    ]
    assert feed.source == f"{wms.url}/{STYLES[style]['path']}"
    assert all(status == 200 for _, status in wms.requests)
    assert feed.bytes_read > 0
    pages_fetched = len(wms.requests)
    assert pages_fetched == (4 if style == "page" else 3)  # page numbers stop at an empty page


def test_numbers_stay_as_written_and_a_timestamp_path_dates_the_feed(wms):
    page = (
        b'[{"sku": "A", "qty": 1e3, "at": "2026-11-20T08:00:00Z"},'
        b' {"sku": "B", "qty": 12.50, "at": "2026-11-21T09:30:00Z"}]'
    )
    wms.fail("stock/raw", 200, body=page)
    wh = warehouse(
        wms, "cursor", path="stock/raw", records_path="", sku_column="sku", quantity_column="qty"
    )
    assert read_http_feed(wh, KEY).rows["quantity_text"].to_list() == ["1e3", "12.50"]
    wms.fail("stock/raw", 200, body=page)
    feed = read_http_feed(wh.model_copy(update={"timestamp_column": "at"}), KEY)
    assert feed.modified_at.isoformat() == "2026-11-21T09:30:00+00:00"


def test_a_4xx_fails_the_warehouse_with_the_servers_message(wms):
    wms.fail("cursor=2", 400, body={"message": "cursor expired, start again"})
    with pytest.raises(WarehouseUnreadable) as info:
        read_http_feed(warehouse(wms), KEY)
    assert not isinstance(info.value, WarehouseUnavailable)
    assert str(info.value) == (
        f"warehouse 'wms': GET {wms.url}/stock/cursor: HTTP 400 cursor expired, start again"
    )


def test_a_wrong_key_says_so_and_never_shows_it(wms):
    with pytest.raises(
        WarehouseUnreadable, match="HTTP 401 invalid API key \\(check auth_value\\)"
    ):
        read_http_feed(warehouse(wms), {"auth_value": SecretStr("wrong-key")})
    with pytest.raises(WarehouseUnreadable) as info:
        read_http_feed(warehouse(wms), {"auth_value": SecretStr("wrong-key")})
    assert "wrong-key" not in str(info.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"quantity_column": "stock.qty"},
            "no record has 'stock.qty'; the first record has keys 'item', 'stock'",
        ),
        (
            {"records_path": "data.rows"},
            "no list of records at 'data.rows' .*the body has 'items', 'meta'",
        ),
        ({"path": "stock/nope"}, "HTTP 404 no such endpoint: /stock/nope"),
    ],
)
def test_configuration_mistakes_name_what_to_fix(wms, extra, message):
    with pytest.raises(WarehouseUnreadable, match=message):
        read_http_feed(warehouse(wms, **extra), KEY)


def test_no_records_is_refused_unless_allowed(wms):
    wms.records = []
    with pytest.raises(WarehouseUnreadable, match="returned no records; .*allow_empty"):
        read_http_feed(warehouse(wms), KEY)
    assert read_http_feed(warehouse(wms, allow_empty=True), KEY).rows.height == 0


def test_a_looping_cursor_is_an_error_not_an_endless_read(wms):
    wms.fail("cursor=2", 200, times=5, body={"items": [], "meta": {"next_cursor": "2"}})
    with pytest.raises(WarehouseUnreadable, match="meta.next_cursor = '2' is not a new page"):
        read_http_feed(warehouse(wms), KEY)


def test_transient_failures_are_marked_for_a_retry(wms):
    wms.fail("&page=2", 503)
    with pytest.raises(WarehouseUnavailable, match="HTTP 503 injected 503"):
        read_http_feed(warehouse(wms, "page", retries=0), KEY)
    with pytest.raises(WarehouseUnavailable, match="connection failed"):
        read_http_feed(warehouse(wms, base_url="http://127.0.0.1:1", retries=0), KEY)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))  # type: ignore[arg-type]
def extract_in_a_flow(warehouses: list) -> Extracted:
    return extract_all(warehouses)


@pytest.mark.usefixtures("prefect_api")
def test_a_page_that_fails_with_503_is_retried_on_its_own_and_the_read_goes_on(wms, monkeypatch):
    monkeypatch.setenv("WMS_KEY", API_KEY)
    wms.fail("&page=2", 503)
    extracted = extract_in_a_flow([warehouse(wms, "page", retries=2)])
    [feed] = extracted.feeds
    assert feed.rows["sku_text"].to_list() == ["A", "B", "C", "D", "42"]
    assert [(target.split("?")[1], status) for target, status in wms.requests] == [
        ("per_page=2&page=1", 200),
        ("per_page=2&page=2", 503),
        ("per_page=2&page=2", 200),  # only the page that failed is read again
        ("per_page=2&page=3", 200),
        ("per_page=2&page=4", 200),
    ]


@pytest.mark.usefixtures("prefect_api")
def test_a_4xx_is_not_retried_and_fails_the_extract(wms, monkeypatch):
    monkeypatch.setenv("WMS_KEY", API_KEY)
    wms.fail("&page=1", 403, body={"error": "key lacks scope stock:read"})
    with pytest.raises(ExtractFailed) as info:
        extract_in_a_flow([warehouse(wms, "page", retries=3)])
    assert "warehouse 'wms': GET" in str(info.value)
    assert "HTTP 403 key lacks scope stock:read (check auth_value)" in str(info.value)
    assert len(wms.requests) == 1


@pytest.mark.fast
def test_a_probe_gets_the_reads_verdict_a_401_is_not_worth_a_retry(wms):
    wh = warehouse(wms, "page")
    with pytest.raises(WarehouseUnreadable) as info:
        probe_http(wh, {"auth_value": SecretStr("wrong-key")})
    assert not isinstance(info.value, WarehouseUnavailable)
    assert "HTTP 401 invalid API key (check auth_value)" in str(info.value)
    assert [status for _, status in wms.requests] == [401]  # one GET (HEAD is refused), no retry
    wms.fail("page=1", 503)
    with pytest.raises(WarehouseUnavailable, match="HTTP 503 injected 503"):
        probe_http(wh, KEY)
