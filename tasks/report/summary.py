"""What one run did, in numbers: gathered from every stage, rendered for the terminal and the UI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from tasks.checks.rows import CheckedRows
from tasks.delta import Changes, diff_lines
from tasks.durations import duration
from tasks.guards import ChangeGuard
from tasks.lightspeed.auth import TokenCounts
from tasks.lightspeed.catalog import CatalogRead
from tasks.lightspeed.load import LoadOutcome
from tasks.lightspeed.read_back import ReadBack
from tasks.reconcile import Plan
from tasks.sources.extract import Extracted

UNKNOWN_SKU = "unknown SKU"  # the rows suite's reason, expectations/warehouse_rows.json


@dataclass
class WarehouseLine:
    name: str
    source: str
    rows: int
    skus: int
    bytes: int
    seconds: float
    modified_at: str


@dataclass
class RunSummary:
    """Everything one run did, in numbers; rendered for the terminal and the Prefect UI."""

    run: str
    dry_run: bool
    warehouses: list[WarehouseLine]
    rows_read: int
    rows_flagged: dict[str, int]  # reason -> rows
    rows_dropped: int  # quarantined or held rows: they did not count
    skus_held: int
    products: dict[str, int]  # status -> products
    to_send: int  # after the delta: products that changed (or all, in a full run)
    unchanged: int = 0
    full: bool = False
    chunks: int = 0  # task runs of the load
    request_size: int = 0  # products per PUT at most
    chunks_accepted: int = 0
    chunks_failed: int = 0
    attempts: int = 0
    products_sent: int = 0
    products_not_landed: int = 0
    requests: int = 0  # PUT calls, splits included
    rejected: dict[str, str] = field(default_factory=dict)  # id -> why the API refused it
    drifted: list[str] = field(default_factory=list)  # "SKU (id): pushed X, platform has Y"
    notes: list[str] = field(default_factory=list)  # stale feeds replaced, guard decisions
    diff: list[str] = field(default_factory=list)  # dry run: "SKU (id): old → new"
    diff_totals: str = ""
    failures: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    catalog: str = ""  # where the catalog came from, how old, at what cost
    read_back: str = ""  # what the read-back compared, and how much of the catalog in 24 h
    waited_seconds: float = 0.0  # for room in the platform's rate-limit bucket
    token_refreshes: int | None = None  # OAuth access tokens obtained (None: a static token)
    token_refreshes_after_401: int = 0  # of those, after a request was answered 401

    @property
    def ok(self) -> bool:
        return self.chunks_failed == 0

    @property
    def retries(self) -> int:
        return self.attempts - self.chunks_accepted - self.chunks_failed

    def headline(self) -> str:
        """One line: the verdict and the main counts."""
        verdict = "OK" if self.ok else "FAILED"
        sent = "would send" if self.dry_run else f"sent {self.products_sent} of"
        return (
            f"{verdict}: {sent} {self.to_send} product(s) in {self.chunks} chunk(s) (task runs); "
            f"{sum(self.rows_flagged.values())} row flag(s), {self.skus_held} SKU(s) held, "
            f"{len(self.rejected)} rejected by the API, "
            f"{self.products_not_landed} product(s) did not land"
        )

    def render(self) -> str:
        """Plain text, one screen: what was read, flagged, sent, retried and failed."""
        out = [
            f"inventory-sync run {self.run}" + (" (dry run: nothing sent)" if self.dry_run else "")
        ]
        if self.catalog:
            out.append(f"Catalog: {self.catalog}")
        out.append(f"Read {self.rows_read} row(s) from {len(self.warehouses)} warehouse(s):")
        for w in self.warehouses:
            out.append(
                f"  {w.name:<16} {w.rows:>9} rows {w.skus:>8} SKUs {_size(w.bytes):>9} "
                f"{w.seconds:6.2f}s  "
                f"{w.source} (modified {w.modified_at})"
            )
        if self.rows_flagged:
            out.append(
                f"Flagged rows ({self.rows_dropped} did not count, {self.skus_held} SKU(s) held):"
            )
            out += [f"  {reason:<32} {n:>9}" for reason, n in self.rows_flagged.items()]
        else:
            out.append("Flagged rows: none")
        out.append("Products:")
        out += [f"  {status:<48} {n:>9}" for status, n in self.products.items() if n]
        if self.full:
            out.append(f"Full run: all {self.to_send} product(s) to send, changed or not.")
        else:
            out.append(
                f"Changed since the last push: {self.to_send}; unchanged (not sent): "
                f"{self.unchanged}."
            )
        out += [f"Note: {note}" for note in self.notes]
        if self.dry_run:
            out.append(
                f"Would send {self.to_send} product(s) in {self.chunks} chunk(s) (task runs), "
                f"in PUT requests of up to {self.request_size} products."
            )
            if self.diff:
                out.append(f"Biggest changes (first {len(self.diff)}; old → new):")
                out += [f"  {line}" for line in self.diff]
                out.append(f"  {self.diff_totals}")
        else:
            out.append(
                f"Sent {self.products_sent} of {self.to_send} product(s): "
                f"{self.chunks_accepted} of {self.chunks} chunk(s) accepted, "
                f"{self.attempts} attempt(s) ({self.retries} retried); "
                f"{self.requests} PUT request(s) of up to {self.request_size} products."
            )
        if self.waited_seconds >= 0.05:
            out.append(f"Waited {self.waited_seconds:.1f}s for room in the platform's rate limit.")
        if self.token_refreshes is not None:
            after = self.token_refreshes_after_401
            out.append(
                f"Access tokens: {self.token_refreshes} refreshed"
                + (f" ({after} after a 401)." if after else ".")
            )
        if self.read_back:
            out.append(f"Read-back: {self.read_back}")
        if self.rejected:
            out.append(f"Rejected by the API and quarantined for this run: {len(self.rejected)}")
            out += [f"  {pid}: {why}" for pid, why in list(self.rejected.items())[:10]]
        if self.drifted:
            out.append(f"Drift after the load (re-sent next run): {len(self.drifted)}")
            out += [f"  {line}" for line in self.drifted[:10]]
        for failure in self.failures:
            out.append(f"  FAILED {failure}")
        for what, path in self.files.items():
            out.append(f"{what}: {path}")
        verdict = "OK" if self.ok else f"FAILED: {self.products_not_landed} product(s) did not land"
        out.append(f"Result: {verdict}")
        return "\n".join(out)


def summarize(
    run: str,
    dry_run: bool,
    extracted: Extracted,
    checked: CheckedRows,
    plan: Plan,
    changes: Changes,
    outcome: LoadOutcome | None,
    *,
    chunk_size: int,
    request_size: int,
    read_back: ReadBack | str | None,
    notes: list[str],
    guard: ChangeGuard,
    catalog: CatalogRead | None = None,
    audited: float | None = None,
    diff_lines_shown: int = 20,
    tokens: TokenCounts | None = None,
) -> RunSummary:
    """Gather the counts of every stage into one summary."""
    flagged = checked.flagged
    summary = RunSummary(
        run=run,
        dry_run=dry_run,
        warehouses=[
            WarehouseLine(
                name=f.warehouse,
                source=f.source,
                rows=f.rows.height,
                skus=checked.skus.get(f.warehouse, 0),
                bytes=f.bytes_read,
                seconds=round(extracted.seconds.get(f.warehouse, 0.0), 3),
                modified_at=f.modified_at.isoformat(timespec="seconds"),
            )
            for f in extracted.feeds
        ],
        rows_read=sum(f.rows.height for f in extracted.feeds),
        rows_flagged=dict(flagged.group_by("reason").len().sort("reason").iter_rows()),
        rows_dropped=flagged.filter(pl.col("action") != "report")["row_id"].n_unique(),
        skus_held=checked.held_skus.len(),
        products=plan.counts(),
        to_send=changes.to_send.height,
        unchanged=changes.unchanged,
        full=changes.full,
        chunks=-(-changes.to_send.height // chunk_size),
        request_size=min(request_size, chunk_size),
        notes=list(notes),
    )
    if guard.tripped:
        summary.notes.append(
            f"change guard: {guard.zeroed} of {guard.in_stock_before} in-stock products to "
            f"zero, units {guard.units_before} → {guard.units_after}"
            + (" (a real run would ask for approval)" if dry_run else " (approved)")
        )
    if dry_run:
        summary.diff = diff_lines(changes.to_send, diff_lines_shown)
        before = changes.to_send["previous"].fill_null(0).sum()
        summary.diff_totals = (
            f"{changes.to_send.height} product(s) change; their units go from {before} to "
            f"{changes.to_send['quantity'].sum()}"
        )
    if tokens is not None:
        summary.token_refreshes = tokens.refreshes
        summary.token_refreshes_after_401 = tokens.after_401
    if outcome is not None:
        summary.chunks_accepted = len(outcome.accepted)
        summary.chunks_failed = len(outcome.failed)
        summary.attempts = outcome.attempts
        summary.products_sent = outcome.products_sent
        summary.products_not_landed = outcome.products_failed
        summary.requests = outcome.requests
        summary.waited_seconds += outcome.waited_seconds
        summary.rejected = outcome.rejected
        summary.failures = [
            f"chunk {f.label} after {f.attempts} attempt(s): {f.error}; did not land: "
            + _some_skus(f.products["vendorSku"])
            for f in outcome.failed
        ]
    if catalog is not None:
        summary.catalog = f"{catalog.frame.height} product(s), {catalog.origin}"
        summary.notes += catalog.notes
        summary.waited_seconds += catalog.waited_seconds
        unknown = summary.rows_flagged.get(UNKNOWN_SKU, 0)
        if unknown and catalog.refreshed_at is not None and catalog.pages == 0:
            summary.notes.append(
                f"{unknown} row(s) name a SKU the catalog does not know; it was refreshed "
                f"{duration(datetime.now(UTC) - catalog.refreshed_at, glance=True)} ago, so a product "
                "added since gets its quantity after the next refresh (--refresh-catalog "
                "refreshes now)"
            )
    if isinstance(read_back, str):
        summary.notes.append(read_back)
    elif read_back is not None:
        summary.waited_seconds += read_back.waited_seconds
        summary.drifted = [
            f"{sku} ({pid}): pushed {pushed}, platform has {'nothing' if now is None else now}"
            for pid, sku, pushed, now in read_back.drift.iter_rows()
        ]
        coverage = "the whole catalog" if read_back.whole_catalog else f"{read_back.pages} page(s)"
        summary.read_back = (
            f"{coverage}, {read_back.products_read} product(s) compared "
            f"({read_back.sent_checked} of the {summary.products_sent} sent this run), "
            f"{read_back.retries} GET(s) retried"
        )
        if audited is not None:
            summary.read_back += f"; {audited:.0%} of the catalog audited in the last 24 h"
    return summary


def _size(count: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def _some_skus(skus: pl.Series, shown: int = 5) -> str:
    listed = ", ".join(str(s) for s in skus.head(shown))
    return listed + (f" (+{skus.len() - shown} more)" if skus.len() > shown else "")
