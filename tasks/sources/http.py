"""WMS HTTP APIs: paged JSON stock records, mapped to SKU and quantity by dotted paths.

Each page is retried on its own when the failure may pass (429, 5xx, a timeout, a dropped
connection), Retry-After honoured, so one bad page out of many costs one request; the extract
task does not retry the whole read on top of that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urljoin

import httpx
import polars as pl
from pydantic import Field, SecretStr, field_validator, model_validator

from tasks.config.fields import http_url
from tasks.config.secrets import SecretRef
from tasks.http.read_retries import ReadCounts, ReadPolicy, read_with_retries
from tasks.http.verdicts import (
    USER_AGENT,
    Unreachable,
    is_transient,
    retry_after_seconds,
    send,
    server_message,
)
from tasks.sources.feed import (
    RECORDS_WORDING,
    Feed,
    Fingerprint,
    SourceKind,
    WarehouseUnavailable,
    WarehouseUnreadable,
    feed_frame,
)
from tasks.sources.warehouse import RemoteWarehouse

MAX_RETRY_AFTER_SECONDS = 60.0
MAX_PAGES = 100_000
_MISSING = object()


class HttpWarehouse(RemoteWarehouse):
    kind: Literal["http"]
    base_url: str = Field(description="the WMS API root, e.g. https://wms.example.com/api")
    path: str = Field("", description="the stock endpoint, relative to base_url")
    params: dict[str, str] = Field(default_factory=dict, description="extra query parameters")
    auth_header: str = Field(
        "Authorization", min_length=1, description='the header auth_value goes in, e.g. "X-Api-Key"'
    )
    auth_value: SecretRef | None = Field(None, description='the whole value, e.g. "Bearer abc"')
    records_path: str = Field("", description='dotted path to each page\'s records; "" = the body')
    pagination: Literal["none", "page", "cursor", "next"] = Field(
        "none", description="none: one request; page: by number; cursor; next: a link in the body"
    )
    page_param: str = Field(
        "page", min_length=1, description="page: the query parameter of the page number"
    )
    first_page: int = Field(1, ge=0, description="page: the first page's number")
    page_size_param: str | None = Field(
        None, min_length=1, description="page: the query parameter of the page size, with page_size"
    )
    page_size: int | None = Field(None, ge=1, description="records per page, with page_size_param")
    cursor_param: str = Field(
        "cursor", min_length=1, description="cursor: the query parameter that sends it back"
    )
    cursor_path: str | None = Field(
        None,
        min_length=1,
        description='cursor: dotted path to the next cursor; null or "" = the last page',
    )
    next_path: str = Field(
        "next",
        min_length=1,
        description="next: dotted path to the next page's URL (absolute or relative)",
    )

    _url = field_validator("base_url")(http_url)

    @model_validator(mode="after")
    def _pagination_keys(self) -> HttpWarehouse:
        if self.pagination == "cursor" and not self.cursor_path:
            raise ValueError('pagination = "cursor" needs cursor_path = "<dotted path>"')
        if (self.page_size is None) != (self.page_size_param is None):
            raise ValueError("page_size and page_size_param go together")
        return self


def read_http_feed(warehouse: HttpWarehouse, secrets: Mapping[str, SecretStr]) -> Feed:
    """Read every page of the stock endpoint; each record's SKU and quantity as text."""
    source = endpoint(warehouse)
    with WmsClient(warehouse, secrets.get("auth_value")) as client:
        records = [record for page in pages(warehouse, client) for record in page]
        size = client.bytes_read
    frame = records_frame(warehouse, source, records)
    return feed_frame(
        warehouse, source, frame, size, datetime.now(UTC), first_line=1, wording=RECORDS_WORDING
    )


def probe_http(warehouse: HttpWarehouse, secrets: Mapping[str, SecretStr]) -> Fingerprint:
    """The endpoint's ETag or Last-Modified (HEAD, else GET); without either, the first page's digest."""
    source = endpoint(warehouse)
    with WmsClient(warehouse, secrets.get("auth_value")) as client:
        return Fingerprint(source, client.version(source, first_page_params(warehouse)))


def first_page_params(warehouse: HttpWarehouse) -> dict[str, str]:
    """The query parameters of the first page of the stock endpoint."""
    params = dict(warehouse.params)
    if warehouse.page_size_param and warehouse.page_size:
        params[warehouse.page_size_param] = str(warehouse.page_size)
    if warehouse.pagination == "page":
        params[warehouse.page_param] = str(warehouse.first_page)
    return params


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
        self.policy = ReadPolicy(
            attempts=warehouse.retries + 1,
            backoff_seconds=warehouse.retry_backoff_seconds,
            max_wait_seconds=MAX_RETRY_AFTER_SECONDS,
        )
        self.reads = ReadCounts()

    def __enter__(self) -> WmsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def get(self, url: str, params: Mapping[str, str | int]) -> Any:
        """GET one page, retried on its own when the failure may pass (warehouse.retries times)."""
        return read_with_retries(
            lambda: self._get_once(url, params),
            self.policy,
            WarehouseUnavailable,
            lambda exc: getattr(exc, "retry_after", None),
            self.reads,
        )

    def version(self, url: str, params: Mapping[str, str]) -> str:
        """What changes when the stock does: a validator header, else a digest of the first page."""
        for method in ("HEAD", "GET"):
            response = self._checked(
                method, url, params, allow=(405, 501) if method == "HEAD" else ()
            )
            if response is None:
                continue
            for header in ("ETag", "Last-Modified"):
                if response.headers.get(header):
                    return f"{header.lower()}:{response.headers[header]}"
            if method == "GET":
                return "sha256:" + hashlib.sha256(response.content).hexdigest()
        raise AssertionError("unreachable: GET either answers or raises")

    def _checked(
        self, method: str, url: str, params: Mapping[str, str | int], allow: tuple[int, ...] = ()
    ) -> httpx.Response | None:
        """One request and the verdict reads and probes share; None if its status is in `allow`.

        429, 5xx, a timeout or a dropped connection may pass (WarehouseUnavailable); any other
        status that is not 2xx will not (WarehouseUnreadable), so nothing retries a 401 or 404.
        """
        what = f"{method} {url}"
        try:
            response = send(self._http, method, url, what, params=dict(params) or None)
        except Unreachable as exc:
            raise WarehouseUnavailable(self.warehouse, str(exc)) from None
        self.bytes_read += len(response.content)
        status = response.status_code
        if status in allow:
            return None
        if is_transient(status):
            raise WarehouseUnavailable(
                self.warehouse,
                f"{what}: HTTP {status} {server_message(response)}",
                retry_after_seconds(response),
            )
        if not 200 <= status < 300:
            hint = " (check auth_value)" if status in (401, 403) else ""
            raise WarehouseUnreadable(
                self.warehouse, f"{what}: HTTP {status} {server_message(response)}{hint}"
            )
        return response

    def _get_once(self, url: str, params: Mapping[str, str | int]) -> Any:
        """GET one page and return its JSON, numbers kept as the text the server wrote."""
        response = self._checked("GET", url, params)
        assert response is not None  # no status is allowed: every one gets its verdict
        what = f"GET {url}"
        try:
            return json.loads(response.content, parse_int=str, parse_float=str)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WarehouseUnreadable(
                self.warehouse, f"{what}: the response is not JSON: {response.text[:200]!r}"
            ) from None


def pages(warehouse: HttpWarehouse, client: WmsClient) -> Iterator[list[Any]]:
    """Each page's records, following the configured pagination to its end."""
    url, params = endpoint(warehouse), first_page_params(warehouse)
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


KIND = SourceKind(
    "http", HttpWarehouse, read_http_feed, retries_each_request=True, probe=probe_http
)
