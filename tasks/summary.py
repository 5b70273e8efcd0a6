"""Stage 8: what a user sees: the summary (CLI and Prefect artifact), quarantine table and CSVs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from tasks.checks.rows import CheckedRows
from tasks.delta import Changes, diff_lines
from tasks.guards import Breaker
from tasks.lightspeed.load import LoadOutcome
from tasks.reconcile import Plan
from tasks.sources.extract import Extracted

SUMMARY_KEY = "sync-summary"
QUARANTINE_KEY = "quarantine"
DIFF_KEY = "dry-run-diff"


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
    chunks: int = 0
    chunks_accepted: int = 0
    chunks_failed: int = 0
    attempts: int = 0
    products_sent: int = 0
    products_not_landed: int = 0
    requests: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # id -> why the API refused it
    drifted: list[str] = field(default_factory=list)  # "SKU (id): pushed X, platform has Y"
    notes: list[str] = field(default_factory=list)  # stale feeds replaced, guard decisions
    diff: list[str] = field(default_factory=list)  # dry run: "SKU (id): old → new"
    diff_totals: str = ""
    failures: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

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
            f"{verdict}: {sent} {self.to_send} product(s) in {self.chunks} chunk(s); "
            f"{sum(self.rows_flagged.values())} row flag(s), {self.skus_held} SKU(s) held, "
            f"{len(self.rejected)} rejected by the API, "
            f"{self.products_not_landed} product(s) did not land"
        )

    def render(self) -> str:
        """Plain text, one screen: what was read, flagged, sent, retried and failed."""
        out = [
            f"inventory-sync run {self.run}" + (" (dry run: nothing sent)" if self.dry_run else "")
        ]
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
            out.append(f"Would send {self.to_send} product(s) in {self.chunks} chunk(s).")
            if self.diff:
                out.append(f"Biggest changes (first {len(self.diff)}; old → new):")
                out += [f"  {line}" for line in self.diff]
                out.append(f"  {self.diff_totals}")
        else:
            out.append(
                f"Sent {self.products_sent} of {self.to_send} product(s): "
                f"{self.chunks_accepted} of {self.chunks} chunk(s) accepted, "
                f"{self.attempts} attempt(s) ({self.retries} retried), {self.requests} request(s)."
            )
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
    drift: pl.DataFrame | str | None,
    notes: list[str],
    breaker: Breaker,
    diff_lines_shown: int = 20,
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
                skus=f.rows["sku_text"].str.strip_chars().drop_nulls().n_unique(),
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
        notes=list(notes),
    )
    if breaker.tripped:
        summary.notes.append(
            f"change guard: {breaker.zeroed} of {breaker.in_stock_before} in-stock products to "
            f"zero, units {breaker.units_before} → {breaker.units_after}"
            + (" (a real run would ask for approval)" if dry_run else " (approved)")
        )
    if dry_run:
        summary.diff = diff_lines(changes.to_send, diff_lines_shown)
        before = changes.to_send["previous"].fill_null(0).sum()
        summary.diff_totals = (
            f"{changes.to_send.height} product(s) change; their units go from {before} to "
            f"{changes.to_send['quantity'].sum()}"
        )
    if isinstance(drift, str):
        summary.notes.append(drift)
    elif drift is not None:
        summary.drifted = [
            f"{sku} ({pid}): pushed {pushed}, platform has {'nothing' if now is None else now}"
            for pid, sku, pushed, now in drift.iter_rows()
        ]
    if outcome is not None:
        summary.chunks_accepted = len(outcome.accepted)
        summary.chunks_failed = len(outcome.failed)
        summary.attempts = outcome.attempts
        summary.products_sent = outcome.products_sent
        summary.products_not_landed = outcome.products_failed
        summary.requests = outcome.requests
        summary.rejected = outcome.rejected
        summary.failures = [
            f"chunk {f.label} after {f.attempts} attempt(s): {f.error}; did not land: "
            + _some_skus(f.products["vendorSku"])
            for f in outcome.failed
        ]
    return summary


def _size(count: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def _some_skus(skus: pl.Series, shown: int = 5) -> str:
    listed = ", ".join(str(s) for s in skus.head(shown))
    return listed + (f" (+{skus.len() - shown} more)" if skus.len() > shown else "")


def write_files(
    summary: RunSummary,
    checked: CheckedRows,
    changes: Changes,
    outcome: LoadOutcome | None,
    folder: str,
) -> None:
    """The quarantine CSV (every flagged row and why), the not-landed CSV, the dry-run diff."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = Path(folder)
    if summary.dry_run and changes.to_send.height:
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"{stamp}-{summary.run}-dry-run-diff.csv"
        changes.to_send.rename({"previous": "old", "quantity": "new"}).select(
            "vendorSku", "id", "old", "new"
        ).write_csv(path)
        summary.files["What would change"] = str(path)
    if checked.flagged.height:
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"{stamp}-{summary.run}-quarantine.csv"
        checked.flagged.drop("row_id").write_csv(path)
        summary.files["Quarantine report"] = str(path)
    if outcome is not None and (outcome.failed or outcome.rejected):
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"{stamp}-{summary.run}-not-landed.csv"
        failed = [
            f.products.select("id", "vendorSku", "quantity").with_columns(
                pl.lit(f.label).alias("chunk"), pl.lit(f.error).alias("error")
            )
            for f in outcome.failed
        ]
        rejected = pl.DataFrame(
            {"id": list(outcome.rejected), "error": list(outcome.rejected.values())},
            schema={"id": pl.String, "error": pl.String},
        )
        pl.concat([*failed, rejected], how="diagonal").write_csv(path)
        summary.files["Products that did not land"] = str(path)


def publish_artifacts(
    summary: RunSummary, checked: CheckedRows, changes: Changes, max_rows: int
) -> None:
    """The summary as markdown, the quarantine (and, in a dry run, the diff) as tables."""
    create_markdown_artifact(
        markdown="```\n" + summary.render() + "\n```",
        key=SUMMARY_KEY,
        description="What this run read, flagged, sent, retried and failed",
    )
    flagged = checked.flagged.drop("row_id")
    if flagged.height:
        shown = flagged.head(max_rows)
        create_table_artifact(
            table=shown.to_dicts(),
            key=QUARANTINE_KEY,
            description=(
                f"{flagged.height} flagged row(s)"
                + (f"; first {max_rows} shown, all in the CSV" if flagged.height > max_rows else "")
            ),
        )
    if summary.dry_run:
        diff = changes.to_send.rename({"previous": "old", "quantity": "new"})
        create_table_artifact(
            table=diff.select("vendorSku", "id", "old", "new").head(max_rows).to_dicts(),
            key=DIFF_KEY,
            description=(
                f"Dry run: {diff.height} product(s) would change"
                + (f"; first {max_rows} shown" if diff.height > max_rows else "")
                + f"; {changes.unchanged} unchanged"
            ),
        )


EVENT_SUCCEEDED = "inventory-sync.run.succeeded"
EVENT_FAILED = "inventory-sync.run.failed"


def run_event_payload(result: object) -> dict[str, object]:
    """The counts an automation can test, from a summary or from the error that ended the run."""
    summary = getattr(result, "summary", result)
    if not isinstance(summary, RunSummary):
        return {"error": f"{type(result).__name__}: {result}"[:2000]}
    payload: dict[str, object] = {
        "dry_run": summary.dry_run,
        "rows_read": summary.rows_read,
        "rows_flagged": sum(summary.rows_flagged.values()),
        "rows_dropped": summary.rows_dropped,
        "skus_held": summary.skus_held,
        "products_to_send": summary.to_send,
        "products_sent": summary.products_sent,
        "products_not_landed": summary.products_not_landed,
        "products_unchanged": summary.unchanged,
        "products_rejected": len(summary.rejected),
        "products_drifted": len(summary.drifted),
        "chunks": summary.chunks,
        "chunks_failed": summary.chunks_failed,
        "attempts": summary.attempts,
    }
    if summary.failures:
        payload["error"] = "; ".join(summary.failures)[:2000]
    return payload


def emit_run_event(flow: object, flow_run: Any, state: Any) -> None:
    """Prefect flow hook: one event per run, `inventory-sync.run.succeeded` or `.failed`."""
    result = state.result(raise_on_failure=False) if state.is_final() else None
    payload = run_event_payload(result)
    emit_event(
        event=EVENT_SUCCEEDED if state.is_completed() else EVENT_FAILED,
        resource={
            "prefect.resource.id": f"inventory-sync.run.{flow_run.id}",
            "prefect.resource.name": flow_run.name,
            # labels, because automations match labels, not payload values
            "inventory-sync.quarantined": _yes(payload.get("rows_dropped")),
            "inventory-sync.rejected": _yes(payload.get("products_rejected")),
            "inventory-sync.drifted": _yes(payload.get("products_drifted")),
        },
        related=[
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": flow_run.name,
            }
        ],
        payload=payload,
    )


def _yes(count: object) -> str:
    return "true" if isinstance(count, int) and count > 0 else "false"
