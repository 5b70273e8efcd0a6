"""Stage 1: read every warehouse feed, one task each; any unreadable feed stops the run."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from tasks.config import Warehouse
from tasks.feeds import FEED_SCHEMA, Feed, WarehouseUnreadable
from tasks.warehouse_files import read_csv_feed, read_parquet_feed

READERS: dict[str, Callable[[Any], Feed]] = {
    "csv": read_csv_feed,
    "parquet": read_parquet_feed,
}


class ExtractFailed(Exception):
    """One or more warehouses could not be read; nothing has been sent."""


@dataclass(frozen=True)
class Extracted:
    feeds: list[Feed]
    seconds: dict[str, float]

    def rows(self) -> pl.DataFrame:
        """All warehouses' rows in one frame, each with a run-wide row_id."""
        frames = [feed.rows for feed in self.feeds]
        rows = pl.concat(frames) if frames else pl.DataFrame(schema=FEED_SCHEMA)
        return rows.with_row_index("row_id")


def read_feed(warehouse: Warehouse) -> Feed:
    """Read one warehouse with the reader for its kind."""
    return READERS[warehouse.kind](warehouse)


@task(name="extract", task_run_name="extract {warehouse.name}", cache_policy=NO_CACHE)
def extract_warehouse(warehouse: Warehouse) -> tuple[Feed, float]:
    """Read one warehouse feed and say what was read."""
    started = time.perf_counter()
    feed = read_feed(warehouse)
    seconds = time.perf_counter() - started
    get_run_logger().info(
        "warehouse %r: %d rows, %d bytes from %s in %.2fs",
        feed.warehouse,
        feed.rows.height,
        feed.bytes_read,
        feed.source,
        seconds,
    )
    return feed, seconds


def extract_all(warehouses: Sequence[Warehouse]) -> Extracted:
    """Read all warehouses concurrently; if any fails, raise naming every one that failed."""
    futures = [extract_warehouse.submit(w) for w in warehouses]
    wait(futures)
    feeds: list[Feed] = []
    seconds: dict[str, float] = {}
    problems: list[str] = []
    for warehouse, future in zip(warehouses, futures, strict=True):
        outcome = future.result(raise_on_failure=False)
        if isinstance(outcome, WarehouseUnreadable):
            problems.append(str(outcome))
        elif isinstance(outcome, BaseException):
            problems.append(f"warehouse {warehouse.name!r}: {type(outcome).__name__}: {outcome}")
        else:
            feed, took = outcome
            feeds.append(feed)
            seconds[feed.warehouse] = took
    if problems:
        raise ExtractFailed(
            f"{len(problems)} of {len(warehouses)} warehouse(s) could not be read; "
            "nothing was sent:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return Extracted(feeds, seconds)
