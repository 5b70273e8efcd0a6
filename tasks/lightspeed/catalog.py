"""The supplier's catalog: product UUID, vendorSku and inventory flags, from the API or a CSV."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.config.settings import CatalogSettings, LightspeedSettings
from tasks.durations import duration
from tasks.errors import SyncError
from tasks.http.read_retries import run_warning
from tasks.lightspeed.client import (
    Credentials,
    LightspeedClient,
    LightspeedError,
    Unauthorized,
)
from tasks.lightspeed.contract import BACKORDER, TRACKED, FlagError, parse_flag
from tasks.report.progress import current as current_progress
from tasks.state.location import StateLocation
from tasks.state.store import KeptCatalog, RefreshProgress, StateStore
from tasks.text_columns import is_duplicated, needs_trimming

CATALOG_SCHEMA = {
    "id": pl.String,
    "vendorSku": pl.String,
    "tracked": pl.Boolean,
    "backorder": pl.Boolean,
    "platform_quantity": pl.Int64,  # what GET /products reported; null from a catalog file
}
CSV_COLUMNS = ("vendorSku", "id", TRACKED, BACKORDER)


class CatalogError(SyncError):
    """The catalog could not be read, or holds a value we cannot interpret."""


def _flag(value: Any, where: str) -> bool:
    try:
        return parse_flag(value)
    except FlagError as exc:
        raise CatalogError(f"{where}: {exc}") from None


def catalog_from_products(
    products: list[dict[str, Any]], where: str = "GET /products"
) -> pl.DataFrame:
    """The catalog frame from GET /products items."""
    ids, skus, tracked, backorder, quantities = [], [], [], [], []
    for n, product in enumerate(products, start=1):
        pid = product.get("id") if isinstance(product, dict) else None
        if not isinstance(pid, str) or not pid:
            raise CatalogError(f"{where} item #{n}: no product id")
        inventory = product.get("inventory") or {}
        if not isinstance(inventory, dict):
            raise CatalogError(f"product {pid}: 'inventory' is not an object")
        where = f"product {pid}: inventory."
        ids.append(pid)
        sku = product.get("vendorSku")
        skus.append(sku.strip() if isinstance(sku, str) and sku.strip() else None)
        tracked.append(_flag(inventory.get(TRACKED), where + TRACKED))
        backorder.append(_flag(inventory.get(BACKORDER), where + BACKORDER))
        quantity = product.get("quantity")
        quantities.append(quantity if type(quantity) is int else None)
    frame = pl.DataFrame(
        {
            "id": ids,
            "vendorSku": skus,
            "tracked": tracked,
            "backorder": backorder,
            "platform_quantity": quantities,
        },
        schema=CATALOG_SCHEMA,
    )
    return _unique_ids(frame, where)


def catalog_from_csv(path: str) -> pl.DataFrame:
    """The catalog frame from a CSV with vendorSku,id,isInventoryTrackingEnabled,... columns."""
    raw = _read_catalog_csv(path)
    raw = raw.rename({c: c.strip() for c in raw.columns})
    missing = [c for c in CSV_COLUMNS if c not in raw.columns]
    if missing:
        raise CatalogError(
            f"catalog file {path}: missing column(s) {', '.join(missing)}; "
            f"found {', '.join(raw.columns) or 'none'}"
        )
    # vectorised, not row by row: a catalog can hold a million products
    frame = pl.DataFrame(
        {
            "id": _blank_to_null(raw["id"]),
            "vendorSku": _blank_to_null(raw["vendorSku"]),
            "tracked": _flags(raw[TRACKED]),
            "backorder": _flags(raw[BACKORDER]),
            "platform_quantity": pl.repeat(None, raw.height, dtype=pl.Int64, eager=True),
        }
    )
    empty = frame["id"].is_null().arg_true()
    if empty.len():
        raise CatalogError(f"catalog file {path}, line {empty[0] + 2}: empty id")
    for column, flag in ((TRACKED, "tracked"), (BACKORDER, "backorder")):
        bad = frame[flag].is_null().arg_true()
        if bad.len():
            raise CatalogError(
                f"catalog file {path}, line {bad[0] + 2}, column {column}: "
                f"not a boolean flag: {raw[column][bad[0]]!r}"
            )
    return _unique_ids(frame, f"catalog file {path}")


def _read_catalog_csv(path: str) -> pl.DataFrame:
    """Every cell as text; the file must be UTF-8 (a mangled SKU would silently match nothing)."""
    try:
        data = Path(path).read_bytes().removeprefix(b"\xef\xbb\xbf")
        if not data.isascii():  # ASCII is UTF-8 as it is; decoding would copy the whole file
            data.decode("utf-8")
        return pl.read_csv(io.BytesIO(data), infer_schema=False)
    except FileNotFoundError:
        raise CatalogError(f"catalog file {path}: not found") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CatalogError(f"catalog file {path}: line {line} is not valid UTF-8") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise CatalogError(f"catalog file {path}: cannot read: {exc}") from None


def _blank_to_null(values: pl.Series) -> pl.Series:
    """Trimmed, and null where nothing is left; text with nothing to trim is not copied."""
    if needs_trimming(values):
        values = values.str.strip_chars()
    if (values == "").any():
        values = values.set(values == "", None)
    return values


def _flags(column: pl.Series) -> pl.Series:
    """The column's flags by parse_flag, applied once per distinct text; null where it fails."""
    texts = column.fill_null("").unique().to_list()
    parsed: list[bool | None] = []
    for text in texts:
        try:
            parsed.append(parse_flag(text))
        except FlagError:
            parsed.append(None)
    return column.fill_null("").replace_strict(texts, parsed, default=None, return_dtype=pl.Boolean)


def _unique_ids(frame: pl.DataFrame, where: str) -> pl.DataFrame:
    repeated = frame.filter(is_duplicated(frame["id"]))["id"].unique().to_list()
    if repeated:
        raise CatalogError(f"{where}: product id(s) listed twice: {', '.join(repeated[:5])}")
    return frame


@dataclass(frozen=True)
class CatalogRead:
    """The catalog a run uses, and how it came by it (kept, refreshed, or a fallback)."""

    frame: pl.DataFrame  # CATALOG_SCHEMA
    origin: str  # one line for the summary: where from, how old, at what cost
    refreshed_at: datetime | None = None  # None: read from a file this run
    pages: int = 0  # GET /products pages read this run
    retries: int = 0  # of those GETs
    waited_seconds: float = 0.0  # for room in the platform's rate-limit bucket
    notes: tuple[str, ...] = ()


def refresh_reason(
    kept: KeptCatalog | None,
    unfinished: RefreshProgress | None,
    settings: CatalogSettings,
    per_page: int,
    asked: bool,
    now: datetime,
) -> str:
    """Why this run must read the catalog from the API, or "" if the kept one will do."""
    if asked:
        return "refresh asked for (a full run, or refresh_catalog)"
    if unfinished is not None and now - unfinished.started_at <= settings.max_age:
        return f"finishing the refresh an earlier run left after page {unfinished.pages}"
    if kept is None:
        return "no catalog kept yet"
    if kept.per_page != per_page:
        return f"per_page changed ({kept.per_page} → {per_page})"
    age = now - kept.refreshed_at
    if age > settings.max_age:
        return f"the kept catalog is {duration(age, glance=True)} old, over catalog.max_age"
    return ""


def refresh_catalog(
    client: LightspeedClient,
    store: StateStore,
    max_age: timedelta,
    now: datetime,
    on_page: Callable[[int], None] | None = None,
) -> tuple[pl.DataFrame, int]:
    """Read GET /products page by page into the state store, resuming a refresh a run left unfinished.

    Each page is kept as soon as it is read, with the next page's URL, so a retry (or the next
    run) goes on from there and no page is read twice. Only a complete pass replaces the kept
    catalog: a half-read catalog is never used as if it were whole. A refresh left older than
    `max_age` starts again, since the platform's pages have moved on since.
    Returns the catalog and the pages read this call; `on_page` hears each page's size.
    """
    progress = store.refresh_progress()
    if (
        progress is None
        or progress.per_page != client.per_page
        or now - progress.started_at > max_age
    ):
        progress = store.start_refresh(client.page_url(1), client.per_page, now)
    elif progress.pages:
        run_warning(f"catalog refresh: resuming after page {progress.pages}")
    number, read = progress.pages, 0
    if progress.next_url:
        for page in client.iter_pages(progress.next_url):
            number += 1
            frame = catalog_from_products(page.products, where=f"GET /products page {number}")
            store.save_refresh_page(number, frame, page.next_url)
            read += 1
            if on_page is not None:
                on_page(len(page.products))
    pages = store.refresh_pages()
    catalog = _unique_ids(
        pl.concat(pages) if pages else pl.DataFrame(schema=CATALOG_SCHEMA), "GET /products"
    )
    store.finish_refresh(catalog, number, client.per_page, now)
    return catalog, read


def read_catalog(
    catalog: CatalogSettings,
    lightspeed: LightspeedSettings,
    credentials: Credentials,
    state: StateLocation,
    refresh: bool = False,
    now: datetime | None = None,
) -> CatalogRead:
    """The catalog from the configured source: the kept API catalog, a refresh of it, or a file."""
    now = now or datetime.now(UTC)
    if catalog.source == "file":
        assert catalog.path is not None  # enforced by the settings
        return CatalogRead(catalog_from_csv(catalog.path), f"file {catalog.path}")
    store = StateStore(state)
    kept = store.kept_catalog()
    unfinished = store.refresh_progress()
    reason = refresh_reason(kept, unfinished, catalog, lightspeed.per_page, refresh, now)
    if not reason:
        assert kept is not None
        return CatalogRead(
            kept.frame,
            f"kept from the API, refreshed {duration(now - kept.refreshed_at, glance=True)} ago "
            f"({kept.pages} page(s))",
            kept.refreshed_at,
        )
    client = LightspeedClient(lightspeed, credentials)
    stage = current_progress().start("catalog", "page", items_label="products read")

    def counted(products: int) -> None:
        stage.advance(1, products)
        stage.set_client_totals(client.reads.retries, client.waited_seconds)

    try:
        frame, pages = refresh_catalog(client, store, catalog.max_age, now, counted)
    finally:
        client.close()
        stage.finish()
    return CatalogRead(
        frame,
        f"refreshed from the API now ({reason}): {pages} page(s) read, "
        f"{client.reads.retries} retried",
        now,
        pages,
        client.reads.retries,
        client.waited_seconds,
    )


@task(name="read-catalog", cache_policy=NO_CACHE)
def read_catalog_task(
    catalog: CatalogSettings,
    lightspeed: LightspeedSettings,
    credentials: Credentials,
    state: StateLocation,
    refresh: bool = False,
) -> CatalogRead:
    """Read the catalog; a retry of this task resumes a refresh from the last page it kept."""
    result = read_catalog(catalog, lightspeed, credentials, state, refresh)
    get_run_logger().info("catalog: %d product(s), %s", result.frame.height, result.origin)
    return result


def settle_catalog(
    outcome: CatalogRead | BaseException,
    settings: CatalogSettings,
    state: StateLocation,
    now: datetime | None = None,
) -> CatalogRead:
    """The catalog to use when the read failed: the kept one, if younger than max_stale_age.

    A wrong token is not a reason to go on: the load would fail the same way.
    """
    if isinstance(outcome, CatalogRead):
        return outcome
    if isinstance(outcome, Unauthorized) or not isinstance(outcome, LightspeedError | CatalogError):
        raise outcome
    now = now or datetime.now(UTC)
    kept = StateStore(state).kept_catalog()
    if kept is None:
        raise CatalogError(
            f"the catalog could not be read and none is kept from an earlier run: {outcome}"
        ) from None
    age = now - kept.refreshed_at
    if age > settings.max_stale_age:
        raise CatalogError(
            f"the catalog refresh failed ({outcome}), and the kept catalog is {duration(age, glance=True)} "
            f"old, over catalog.max_stale_age {duration(settings.max_stale_age, glance=True)}; nothing was sent"
        ) from None
    note = (
        f"catalog refresh failed ({outcome}); used the kept catalog from "
        f"{duration(age, glance=True)} ago instead (the next run tries again, from the page it reached)"
    )
    run_warning(note)
    return CatalogRead(
        kept.frame,
        f"kept from the API, refreshed {duration(age, glance=True)} ago (the refresh failed)",
        kept.refreshed_at,
        notes=(note,),
    )
