"""Guards against numbers that look fine but are wrong: stale feeds and sudden mass drops."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

import polars as pl
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.settings import PREFECT_API_URL
from pydantic import Field

from tasks.config.settings import GuardSettings
from tasks.durations import duration
from tasks.errors import SyncError
from tasks.sources.extract import Extracted
from tasks.sources.feed import Feed
from tasks.sources.warehouse import WarehouseBase

if TYPE_CHECKING:  # the store is passed in: the rules never open it
    from tasks.state.store import FeedMark, StateStore

EVENT_FEED_STALE = "inventory-sync.feed.stale"


class StaleFeeds(SyncError):
    """A feed is too old, or older than the one used by the last successful run."""


class ChangesNotApproved(SyncError):
    """The change guard tripped and nobody approved the run (rejected, timed out, or no server)."""


def stale_reason(
    warehouse: WarehouseBase,
    source: str,
    modified_at: datetime,
    mark: FeedMark | None,
    now: datetime,
) -> str:
    """Why a feed of this age must not be used, or "" if it may."""
    age = now - modified_at
    modified = modified_at.isoformat(timespec="seconds")
    if warehouse.max_age is not None and age > warehouse.max_age:
        return (
            f"feed {source} is {duration(age, glance=True)} old (modified {modified}), "
            f"over max_age {duration(warehouse.max_age, glance=True)}"
        )
    if mark is not None and modified_at < mark.modified_at:
        return (
            f"feed {source} (modified {modified}) is older than the feed used by the last "
            f"successful run, {mark.source} (modified "
            f"{mark.modified_at.isoformat(timespec='seconds')}, run {mark.run})"
        )
    return ""


def guard_feed_ages(
    extracted: Extracted, warehouses: Sequence[WarehouseBase], store: StateStore, now: datetime
) -> tuple[Extracted, list[str]]:
    """Check every feed's age; use a warehouse's last good feed where allowed; fail otherwise.

    A warehouse that was not read this run (a run over a subset) is taken from its last good
    feed too, so that a product stocked in several warehouses is never sent a partial sum.
    Returns the feeds to use and one note per warehouse whose last good feed was used.
    """
    marks = store.feed_marks()
    fresh = {feed.warehouse: feed for feed in extracted.feeds}
    used: list[Feed] = []
    notes: list[str] = []
    problems: list[str] = []
    for warehouse in warehouses:
        mark = marks.get(warehouse.name)
        feed = fresh.get(warehouse.name)
        if feed is not None:
            reason = stale_reason(warehouse, feed.source, feed.modified_at, mark, now)
            if not reason:
                used.append(feed)
                continue
            if warehouse.on_stale != "use_last_good":
                problems.append(
                    f"warehouse {warehouse.name!r}: stale: {reason} "
                    '(on_stale = "use_last_good" would fall back to the last good feed)'
                )
                emit_stale_feed(warehouse, reason, "refused: the run fails, nothing is sent")
                continue
        else:
            reason = "not read in this run (a run over some warehouses only)"
        fallback, why_not = _last_good(warehouse, mark, store, now)
        if fallback is None:
            problems.append(f"warehouse {warehouse.name!r}: {reason}, and {why_not}")
            if feed is not None:
                emit_stale_feed(warehouse, reason, f"refused, and {why_not}: nothing is sent")
            continue
        assert mark is not None  # a fallback exists only where a last good feed was recorded
        used.append(fallback)
        if feed is not None:
            emit_stale_feed(warehouse, reason, f"replaced by its last good feed, {fallback.source}")
        notes.append(
            f"{warehouse.name}: {reason}; used its last good feed instead ({fallback.source}, "
            f"modified {fallback.modified_at.isoformat(timespec='seconds')}, from run {mark.run})"
        )
    if problems:
        raise StaleFeeds(
            f"{len(problems)} warehouse(s) without a usable feed; nothing was sent:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return replace(extracted, feeds=used), notes


def emit_stale_feed(warehouse: WarehouseBase, reason: str, action: str) -> None:
    """One event per stale feed, labelled with the warehouse so an alert can name it."""
    emit_event(
        event=EVENT_FEED_STALE,
        resource={
            "prefect.resource.id": f"inventory-sync.feed.{warehouse.name}",
            "prefect.resource.name": warehouse.name,
            "inventory-sync.warehouse": warehouse.name,
            "inventory-sync.on-stale": warehouse.on_stale,
        },
        payload={
            "warehouse": warehouse.name,
            "reason": f"warehouse {warehouse.name!r}: stale: {reason}",
            "action": action,
            "max_age_seconds": (
                None if warehouse.max_age is None else warehouse.max_age.total_seconds()
            ),
        },
    )


def _last_good(
    warehouse: WarehouseBase, mark: FeedMark | None, store: StateStore, now: datetime
) -> tuple[Feed | None, str]:
    """The warehouse's last good feed, if there is one and it is itself within max_age."""
    rows = store.last_good_rows(warehouse.name) if mark is not None else None
    if mark is None or rows is None:
        return None, "there is no last good feed yet (run it once with every warehouse)"
    too_old = stale_reason(warehouse, mark.source, mark.modified_at, None, now)
    if too_old:
        return None, f"the last good feed is stale too: {too_old}"
    first_line = store.last_good_first_line(warehouse.name)
    return Feed(warehouse.name, mark.source, rows, 0, mark.modified_at, first_line), ""


@dataclass(frozen=True)
class ChangeGuard:
    """How much this run would take away, compared with what the platform last had."""

    in_stock_before: int
    zeroed: int
    units_before: int
    units_after: int
    max_zeroed_share: float
    max_units_drop_share: float
    biggest_drops: pl.DataFrame  # id, vendorSku, previous, quantity

    @property
    def zeroed_share(self) -> float:
        return self.zeroed / self.in_stock_before if self.in_stock_before else 0.0

    @property
    def units_drop_share(self) -> float:
        drop = self.units_before - self.units_after
        return drop / self.units_before if self.units_before > 0 else 0.0

    @property
    def tripped(self) -> bool:
        return (
            self.zeroed_share > self.max_zeroed_share
            or self.units_drop_share > self.max_units_drop_share
        )

    def explain(self) -> str:
        """Markdown: what tripped, and the biggest changes."""
        lines = [
            f"This run would take **{self.zeroed} of {self.in_stock_before}** in-stock products "
            f"to zero ({self.zeroed_share:.0%}; limit {self.max_zeroed_share:.0%}) and change "
            f"total available units from **{self.units_before} to {self.units_after}** "
            f"({-self.units_drop_share:+.0%}; limit -{self.max_units_drop_share:.0%}).",
            "",
            "Biggest drops:",
            "",
            "| product | SKU | before | after |",
            "| --- | --- | ---: | ---: |",
        ]
        lines += [
            f"| {pid} | {sku} | {prev} | {new} |"
            for pid, sku, prev, new in self.biggest_drops.iter_rows()
        ]
        return "\n".join(lines)


def measure_change_guard(
    changes: pl.DataFrame, guards: GuardSettings, show: int = 20
) -> ChangeGuard:
    """Compare new quantities with the previous ones (id, vendorSku, quantity, previous)."""
    known = changes.filter(pl.col("previous").is_not_null())
    drops = (
        known.filter(pl.col("quantity") < pl.col("previous"))
        .with_columns((pl.col("previous") - pl.col("quantity")).alias("drop"))
        .sort("drop", descending=True)
        .head(show)
        .select("id", "vendorSku", "previous", "quantity")
    )
    return ChangeGuard(
        in_stock_before=known.filter(pl.col("previous") > 0).height,
        zeroed=known.filter((pl.col("previous") > 0) & (pl.col("quantity") == 0)).height,
        units_before=int(known["previous"].sum() or 0),
        units_after=int(known["quantity"].sum() or 0),
        max_zeroed_share=guards.max_zeroed_share,
        max_units_drop_share=guards.max_units_drop_share,
        biggest_drops=drops,
    )


class Approval(RunInput):
    """The form a paused run shows in the Prefect UI."""

    approve: bool = Field(False, description="Send this run's changes to Lightspeed")
    note: str = Field("", description="Why (kept in the run's logs)")


def ask_for_approval(guard: ChangeGuard, timeout_seconds: int, poll_seconds: int = 5) -> str:
    """Pause the flow run until someone approves in the UI; raise ChangesNotApproved otherwise."""
    explanation = guard.explain()
    if not PREFECT_API_URL.value():
        raise ChangesNotApproved(
            "the change guard tripped and this run has no Prefect server to ask for approval, "
            "so nothing was sent.\n" + explanation + "\nRun it against a Prefect server to "
            "approve it in the UI, or pass --approve-large-changes if you know it is right."
        )
    create_markdown_artifact(
        key="approval-needed",
        markdown="## Approval needed\n\n" + explanation,
        description="Why this run paused",
    )
    logger = get_run_logger()
    logger.warning(
        "change guard tripped; waiting up to %ds for approval in the UI", timeout_seconds
    )
    form = Approval.with_initial_data(description="## Approve this sync?\n\n" + explanation)
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=timeout_seconds, poll_interval=poll_seconds
        )
    except FlowPauseTimeout:
        raise ChangesNotApproved(
            f"the change guard tripped and nobody approved within {timeout_seconds}s; "
            "nothing was sent.\n" + explanation
        ) from None
    if not answer.approve:
        raise ChangesNotApproved(
            f"the change guard tripped and the run was rejected ({answer.note or 'no note'}); "
            "nothing was sent.\n" + explanation
        )
    logger.warning("large changes approved: %s", answer.note or "no note")
    return answer.note
