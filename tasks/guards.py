"""Guards against numbers that look fine but are wrong: stale feeds and sudden mass drops."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import polars as pl
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.settings import PREFECT_API_URL
from pydantic import Field

from tasks.config import GuardSettings, Warehouse
from tasks.extract import Extracted
from tasks.feeds import Feed
from tasks.state import FeedMark, StateStore


class StaleFeeds(Exception):
    """A feed is too old, or older than the one used by the last successful run."""


class ChangesNotApproved(Exception):
    """The breaker tripped and nobody approved the run (rejected, timed out, or no server)."""


@dataclass(frozen=True)
class Staleness:
    warehouse: str
    reason: str


def stale_reason(feed: Feed, warehouse: Warehouse, mark: FeedMark | None, now: datetime) -> str:
    """Why this feed must not be used, or "" if it may."""
    age = now - feed.modified_at
    if warehouse.max_age is not None and age > warehouse.max_age:
        return (
            f"feed {feed.source} is {_human(age.total_seconds())} old "
            f"(modified {feed.modified_at.isoformat(timespec='seconds')}), "
            f"over max_age {_human(warehouse.max_age.total_seconds())}"
        )
    if mark is not None and feed.modified_at < mark.modified_at:
        return (
            f"feed {feed.source} (modified {feed.modified_at.isoformat(timespec='seconds')}) is "
            f"older than the feed used by the last successful run, {mark.source} "
            f"(modified {mark.modified_at.isoformat(timespec='seconds')}, run {mark.run})"
        )
    return ""


def guard_feed_ages(
    extracted: Extracted, warehouses: Sequence[Warehouse], store: StateStore, now: datetime
) -> tuple[Extracted, list[str]]:
    """Keep fresh feeds; swap a stale one for its last good snapshot if allowed, else fail.

    Returns the feeds to use and one note per substituted warehouse.
    """
    feeds = extracted.feeds
    by_name = {w.name: w for w in warehouses}
    marks = store.feed_marks()
    used: list[Feed] = []
    notes: list[str] = []
    problems: list[str] = []
    for feed in feeds:
        warehouse = by_name[feed.warehouse]
        reason = stale_reason(feed, warehouse, marks.get(feed.warehouse), now)
        if not reason:
            used.append(feed)
            continue
        mark = marks.get(feed.warehouse)
        snapshot = (
            store.last_good_rows(feed.warehouse) if warehouse.on_stale == "use_last_good" else None
        )
        if snapshot is None or mark is None:
            hint = (
                "and there is no last good snapshot yet"
                if warehouse.on_stale == "use_last_good"
                else '(set on_stale = "use_last_good" to fall back to the last good feed)'
            )
            problems.append(f"warehouse {feed.warehouse!r}: stale: {reason} {hint}")
            continue
        used.append(replace(feed, rows=snapshot, source=mark.source, modified_at=mark.modified_at))
        notes.append(
            f"{feed.warehouse}: {reason}; used the last good feed instead ({mark.source}, "
            f"from run {mark.run})"
        )
    if problems:
        raise StaleFeeds(
            f"{len(problems)} stale feed(s); nothing was sent:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return replace(extracted, feeds=used), notes


@dataclass(frozen=True)
class Breaker:
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


def measure_breaker(changes: pl.DataFrame, guards: GuardSettings, show: int = 20) -> Breaker:
    """Compare new quantities with the previous ones (id, vendorSku, quantity, previous)."""
    known = changes.filter(pl.col("previous").is_not_null())
    drops = (
        known.filter(pl.col("quantity") < pl.col("previous"))
        .with_columns((pl.col("previous") - pl.col("quantity")).alias("drop"))
        .sort("drop", descending=True)
        .head(show)
        .select("id", "vendorSku", "previous", "quantity")
    )
    return Breaker(
        in_stock_before=known.filter(pl.col("previous") > 0).height,
        zeroed=known.filter((pl.col("previous") > 0) & (pl.col("quantity") == 0)).height,
        units_before=int(known["previous"].sum() or 0),
        units_after=int(known["quantity"].sum() or 0),
        max_zeroed_share=guards.max_zeroed_share,
        max_units_drop_share=guards.max_units_drop_share,
        biggest_drops=drops,
    )


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


class Approval(RunInput):
    """The form a paused run shows in the Prefect UI."""

    approve: bool = Field(False, description="Send this run's changes to Lightspeed")
    note: str = Field("", description="Why (kept in the run's logs)")


def ask_for_approval(breaker: Breaker, timeout_seconds: int, poll_seconds: int = 5) -> str:
    """Pause the flow run until someone approves in the UI; raise ChangesNotApproved otherwise."""
    explanation = breaker.explain()
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
