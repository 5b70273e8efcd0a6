"""WMS HTTP APIs: paged JSON stock records, mapped to SKU and quantity by dotted paths.

The client never retries: a transient failure (429, 5xx, timeout, dropped connection) raises
WarehouseUnavailable and the extract task retries the whole read, so the UI shows each attempt
and the records always come from one consistent pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import httpx
import polars as pl
from pydantic import SecretStr

from tasks.config import HttpWarehouse
from tasks.sources.feed import Feed, WarehouseUnavailable, WarehouseUnreadable, feed_frame

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 60.0
MAX_PAGES = 100_000
USER_AGENT = "inventory-sync/0.1"
_MISSING = object()


def read_http_feed(warehouse: HttpWarehouse, secrets: Mapping[str, SecretStr]) -> Feed:
    """Read every page of the stock endpoint; each record's SKU and quantity as text."""
    source = endpoint(warehouse)
    with WmsClient(warehouse, secrets.get("auth_value")) as client:
        records = [record for page in pages(warehouse, client) for record in page]
        size = client.bytes_read
    if not records and not warehouse.allow_empty:
        raise WarehouseUnreadable(
            warehouse.name,
            f"{source}: returned no records; refusing to treat the warehouse as empty "
            "(set allow_empty = true for this warehouse if it really can be)",
        )
    frame = records_frame(warehouse, source, records)
    return feed_frame(warehouse, source, frame, size, datetime.now(UTC), first_line=1)


def endpoint(warehouse: HttpWarehouse) -> str:
    """The stock endpoint's URL, without query parameters."""
    return (
        f"{warehouse.base_url}/{warehouse.path.lstrip('/')}"
        if warehouse.path
        else warehouse.base_url
    )


class WmsClient:
    """Owns base URL, auth header, timeouts and the verdict on each response; counts bytes."""

    def __init__(self, warehouse: HttpWarehouse, auth: SecretStr | None) -> None:
        self.warehouse = warehouse.name
        self.bytes_read = 0
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if auth is not None:
            headers[warehouse.auth_header] = auth.get_secret_value()
        self._http = httpx.Client(headers=headers, timeout=warehouse.timeout_seconds)

    def __enter__(self) -> WmsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def get(self, url: str, params: Mapping[str, str | int]) -> Any:
        """GET one page and return its JSON, numbers kept as the text the server wrote."""
        what = f"GET {url}"
        try:
            response = self._http.get(url, params=dict(params) or None)
        except httpx.TimeoutException as exc:
            raise WarehouseUnavailable(
                self.warehouse, f"{what}: timed out ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise WarehouseUnavailable(
                self.warehouse, f"{what}: connection failed ({type(exc).__name__}: {exc})"
            ) from None
        self.bytes_read += len(response.content)
        status = response.status_code
        if status in RETRYABLE_STATUSES or status >= 500:
            _wait_out_retry_after(response)
            raise WarehouseUnavailable(
                self.warehouse, f"{what}: HTTP {status} {_server_message(response)}"
            )
        if not 200 <= status < 300:
            hint = " (check auth_value)" if status in (401, 403) else ""
            raise WarehouseUnreadable(
                self.warehouse, f"{what}: HTTP {status} {_server_message(response)}{hint}"
            )
        try:
            return json.loads(response.content, parse_int=str, parse_float=str)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WarehouseUnreadable(
                self.warehouse, f"{what}: the response is not JSON: {response.text[:200]!r}"
            ) from None


def pages(warehouse: HttpWarehouse, client: WmsClient) -> Iterator[list[Any]]:
    """Each page's records, following the configured pagination to its end."""
    url, params = endpoint(warehouse), dict(warehouse.params)
    if warehouse.page_size_param and warehouse.page_size:
        params[warehouse.page_size_param] = str(warehouse.page_size)
    page = warehouse.first_page
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        if warehouse.pagination == "page":
            params[warehouse.page_param] = str(page)
        body = client.get(url, params)
        records = _records(warehouse, url, body)
        yield records
        if warehouse.pagination == "none" or (warehouse.pagination == "page" and not records):
            return
        if warehouse.pagination == "page":
            page += 1
            continue
        path = warehouse.cursor_path if warehouse.pagination == "cursor" else warehouse.next_path
        following = lookup(body, str(path))
        if following in (None, "", _MISSING):
            return
        if not isinstance(following, str) or following in seen:
            raise WarehouseUnreadable(
                warehouse.name,
                f"GET {url}: {path} = {following!r} is not a new page; the pagination loops",
            )
        seen.add(following)
        if warehouse.pagination == "cursor":
            params[warehouse.cursor_param] = following
        else:
            url, params = urljoin(url, following), {}
    raise WarehouseUnreadable(warehouse.name, f"GET {url}: more than {MAX_PAGES} pages")


def records_frame(warehouse: HttpWarehouse, source: str, records: list[Any]) -> pl.DataFrame:
    """One text column per configured *_column path; a path no record has is a config error."""
    paths = [
        value for key, value in warehouse if key.endswith("_column") and isinstance(value, str)
    ]
    columns: dict[str, list[str | None]] = {}
    for path in dict.fromkeys(paths):
        values = [lookup(record, path) for record in records]
        if records and all(value is _MISSING for value in values):
            keys = ", ".join(map(repr, records[0])) if isinstance(records[0], dict) else "none"
            raise WarehouseUnreadable(
                warehouse.name,
                f"{source}: no record has {path!r}; the first record has keys {keys}",
            )
        columns[path] = [_as_text(value) for value in values]
    return pl.DataFrame(columns, schema={path: pl.String for path in columns})


def lookup(document: Any, path: str) -> Any:
    """The value at a dotted path ("stock.available", "lines.0.sku"); _MISSING when absent."""
    value = document
    for part in path.split(".") if path else []:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _records(warehouse: HttpWarehouse, url: str, body: Any) -> list[Any]:
    records = lookup(body, warehouse.records_path)
    if not isinstance(records, list):
        where = f"at {warehouse.records_path!r}" if warehouse.records_path else "as the body"
        keys = ", ".join(map(repr, body)) if isinstance(body, dict) else type(body).__name__
        raise WarehouseUnreadable(
            warehouse.name,
            f"GET {url}: no list of records {where} (set records_path; the body has {keys})",
        )
    return records


def _as_text(value: Any) -> str | None:
    """JSON numbers arrive as the text the server wrote; null and absent stay null."""
    if value is None or value is _MISSING:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        for key in ("error", "message", "detail", "title"):
            if isinstance(body.get(key), str):
                return str(body[key])
    text = response.text.strip()
    return text[:300] if text else response.reason_phrase


def _wait_out_retry_after(response: httpx.Response) -> None:
    """Honour a short Retry-After inside the attempt; the task's backoff then adds its delay."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return
    time.sleep(min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS))
