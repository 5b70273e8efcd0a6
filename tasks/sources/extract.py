"""Read every warehouse feed, one task each; any unreadable feed stops the run."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import task_run as this_task_run

from tasks.config.secrets import resolve_secrets
from tasks.errors import SyncError
from tasks.http.task_retries import retry_options
from tasks.sources import registry
from tasks.sources.feed import (
    Feed,
    Secrets,
    WarehouseUnavailable,
    WarehouseUnreadable,
)
from tasks.sources.warehouse import RemoteWarehouse, WarehouseBase


class ExtractFailed(SyncError):
    """One or more warehouses could not be read; nothing has been sent."""


@dataclass(frozen=True)
class Extracted:
    feeds: list[Feed]
    seconds: dict[str, float]  # per warehouse, from submit to feed in hand, retries included
    secrets: Mapping[str, Secrets] = field(default_factory=dict, repr=False)


def read_feed(warehouse: WarehouseBase, secrets: Secrets | None = None) -> Feed:
    """Read one warehouse with the reader of its kind."""
    return registry.kind_of(warehouse).read(warehouse, secrets or {})


@task(name="extract", task_run_name="extract {warehouse.name}", cache_policy=NO_CACHE)
def extract_warehouse(warehouse: WarehouseBase, secrets: Secrets) -> Feed:
    """Read one warehouse feed and say what was read."""
    started = time.perf_counter()
    feed = read_feed(warehouse, secrets)
    get_run_logger().info(
        "warehouse %r: %d rows, %d bytes from %s in %.2fs (attempt %d)",
        feed.warehouse,
        feed.rows.height,
        feed.bytes_read,
        feed.source,
        time.perf_counter() - started,
        this_task_run.run_count,
    )
    return feed


def extract_options(warehouse: WarehouseBase) -> dict[str, Any]:
    """Per warehouse: a file is read once; a remote read is retried whole, or per request."""
    if (
        not isinstance(warehouse, RemoteWarehouse)
        or warehouse.retries == 0
        or registry.kind_of(warehouse).retries_each_request
    ):
        return {"retries": 0}
    return retry_options(warehouse.retries, warehouse.retry_backoff_seconds, WarehouseUnavailable)


def extract_all(
    warehouses: Sequence[WarehouseBase], environ: Mapping[str, str] | None = None
) -> Extracted:
    """Read all warehouses concurrently; if any fails, raise naming every one that failed.

    Secrets are read here, once, before any task starts; a missing one is a ConfigError.
    """
    secrets = resolve_secrets(warehouses, environ)
    started = time.perf_counter()
    futures = [
        extract_warehouse.with_options(**extract_options(w)).submit(w, secrets[w.name])
        for w in warehouses
    ]
    done_at = {id(future): time.perf_counter() for future in as_completed(futures)}
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
            feeds.append(outcome)
            seconds[outcome.warehouse] = done_at[id(future)] - started
    if problems:
        raise ExtractFailed(
            f"{len(problems)} of {len(warehouses)} warehouse(s) could not be read; "
            "nothing was sent:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return Extracted(feeds, seconds, secrets)


def archive_processed(extracted: Extracted, warehouses: Sequence[WarehouseBase]) -> list[str]:
    """After a run in which every update landed: each kind's after-success step (SFTP archives).

    A step that fails leaves things as they were, which is harmless: the file is read again
    next run, and quantities are absolute, so the same file gives the same numbers.
    """
    logger = get_run_logger()
    by_name = {w.name: w for w in warehouses}
    done: list[str] = []
    for feed in extracted.feeds:
        warehouse = by_name.get(feed.warehouse)
        step = registry.kind_of(warehouse).after_success if warehouse is not None else None
        if warehouse is None or step is None:
            continue
        try:
            target = step(warehouse, extracted.secrets.get(warehouse.name, {}), feed)
        except WarehouseUnreadable as exc:
            logger.warning("%s; not archived, so the next run reads it again", exc)
            continue
        if target:
            logger.info("warehouse %r: archived %s to %s", warehouse.name, feed.source, target)
            done.append(target)
    return done
