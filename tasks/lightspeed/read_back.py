"""Read quantities back from the API, a bounded number of pages per run, and report drift.

The read-back rotates through the catalog, `guards.read_back_pages` pages per run, so every
product is compared about once a day at the 15-minute schedule without re-reading a whole
catalog every run. On the pages it reads it compares:
- products this run sent: any difference is drift (the update did not stick);
- products pushed by earlier runs: only a platform quantity *above* what was pushed is drift.
  Retailers' orders lower the platform's figure between pushes; re-sending over those would
  undo sales, so a lower figure is left alone.
Drifted products are forgotten in the state, so the next run sends them again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.config.settings import LightspeedSettings
from tasks.lightspeed.client import Credentials, LightspeedClient, LightspeedError
from tasks.lightspeed.load import LoadOutcome
from tasks.report.progress import current as current_progress
from tasks.state.location import StateLocation
from tasks.state.store import StateStore

DRIFT_SCHEMA = {"id": pl.String, "vendorSku": pl.String, "pushed": pl.Int64, "platform": pl.Int64}
PLATFORM_SCHEMA = {"id": pl.String, "platform": pl.Int64}


@dataclass(frozen=True)
class ReadBack:
    """What one read-back read, and the drift it found."""

    drift: pl.DataFrame  # DRIFT_SCHEMA
    pages: int
    products_read: int
    sent_checked: int  # of the products this run sent, those on the pages read
    whole_catalog: bool  # every page was read this run
    retries: int
    waited_seconds: float


def find_drift(
    landed: pl.DataFrame,
    last_pushed: pl.DataFrame,
    platform: pl.DataFrame,
    catalog: pl.DataFrame,
    whole_catalog: bool,
) -> pl.DataFrame:
    """Drift among the products read: see the module's docstring for the two rules."""
    sent = landed.select("id", "vendorSku", pl.col("quantity").alias("pushed"))
    just_sent = sent.join(platform, on="id", how="left" if whole_catalog else "inner").filter(
        pl.col("platform").is_null() | (pl.col("platform") != pl.col("pushed"))
    )
    earlier = (
        last_pushed.join(sent.select("id"), on="id", how="anti")
        .join(platform, on="id", how="inner")
        .filter(pl.col("platform") > pl.col("last_quantity"))
        .join(catalog.select("id", "vendorSku"), on="id", how="left")
        .select("id", "vendorSku", pl.col("last_quantity").alias("pushed"), "platform")
    )
    return pl.concat([just_sent.select(list(DRIFT_SCHEMA)), earlier.select(list(DRIFT_SCHEMA))])


def read_pages(
    client: LightspeedClient,
    start: int,
    budget: int,
    on_page: Callable[[int], None] | None = None,
) -> tuple[pl.DataFrame, dict[int, int], int, bool]:
    """Read up to `budget` pages from page `start`, wrapping to page 1 at the end of the catalog.

    Returns (id, platform) of every product read, products per page read, the page to start
    at next time, and whether the whole catalog was read. `on_page` hears each page's size.
    """
    ids: list[str] = []
    quantities: list[int | None] = []
    pages: dict[int, int] = {}
    number, wrapped = start, False
    while len(pages) < budget and number not in pages:
        page = client.get_page(client.page_url(number))
        pages[number] = len(page.products)
        if on_page is not None:
            on_page(len(page.products))
        for product in page.products:
            quantity = product.get("quantity") if isinstance(product, dict) else None
            ids.append(str(product.get("id")) if isinstance(product, dict) else "")
            quantities.append(quantity if type(quantity) is int else None)
        if page.next_url is None or not page.products:
            number, wrapped = 1, True
        else:
            number += 1
    whole = wrapped and (start == 1 or 1 in pages) and number in pages
    platform = pl.DataFrame({"id": ids, "platform": quantities}, schema=PLATFORM_SCHEMA)
    return platform.unique("id", keep="last"), pages, number, whole


@task(name="read-back", cache_policy=NO_CACHE)
def read_back_task(
    landed: pl.DataFrame,
    catalog: pl.DataFrame,
    settings: LightspeedSettings,
    pages: int,
    credentials: Credentials,
    state: StateLocation,
) -> ReadBack:
    """Read this run's pages of the rotation and compare them with what was pushed."""
    store = StateStore(state)
    client = LightspeedClient(settings, credentials)
    catalog_pages = max(1, -(-catalog.height // settings.per_page))
    stage = current_progress().start(
        "read-back", "page", total=min(pages, catalog_pages), items_label="products read"
    )

    def counted(products: int) -> None:
        stage.advance(1, products)
        stage.set_client_totals(client.reads.retries, client.waited_seconds)

    try:
        platform, read, next_page, whole = read_pages(
            client, store.read_back_start(), pages, counted
        )
    finally:
        client.close()
        stage.finish()
    store.record_audit(read, next_page, datetime.now(UTC))
    drift = find_drift(landed, store.last_pushed(), platform, catalog, whole)
    sent_checked = landed.join(platform, on="id", how="semi").height
    logger = get_run_logger()
    logger.info(
        "read back %d page(s), %d product(s); %d of the %d sent this run were on them",
        len(read),
        platform.height,
        sent_checked,
        landed.height,
    )
    if drift.height:
        logger.warning("%d product(s) drifted; the next run re-sends them", drift.height)
    return ReadBack(
        drift, len(read), platform.height, sent_checked, whole, client.reads.retries,
        client.waited_seconds,
    )  # fmt: skip


def read_back(
    sent: pl.DataFrame,
    outcome: LoadOutcome,
    catalog: pl.DataFrame,
    settings: LightspeedSettings,
    pages: int,
    credentials: Credentials,
    store: StateStore,
) -> ReadBack | str:
    """Read back this run's pages; forget drifted products in the state so the next run resends them.

    Returns what was read, or why the read-back itself failed: the updates did land, so a
    failed check is reported, not turned into a failed run.
    """
    landed = sent.filter(~pl.col("id").is_in(list(outcome.not_landed_ids)))
    state = read_back_task(
        landed, catalog, settings, pages, credentials, store.location, return_state=True
    )
    result = state.result(raise_on_failure=False)
    if not isinstance(result, ReadBack):
        if not isinstance(result, LightspeedError):
            raise result
        return f"read-back failed, drift not checked this run: {result}"
    store.forget(result.drift["id"])
    return result


def audited_share(store: StateStore, catalog_size: int, now: datetime | None = None) -> float:
    """The share of the catalog the read-back has compared in the last 24 hours."""
    now = now or datetime.now(UTC)
    if catalog_size == 0:
        return 1.0
    return min(1.0, store.audited_since(now - timedelta(hours=24)) / catalog_size)
