"""Where a run's results go besides the terminal: report files, Prefect artifacts, the run event."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from tasks.checks.rows import CheckedRows
from tasks.delta import Changes
from tasks.lightspeed.load import LoadOutcome
from tasks.report.summary import RunSummary

SUMMARY_KEY = "sync-summary"
QUARANTINE_KEY = "quarantine"
DIFF_KEY = "dry-run-diff"


def write_files(
    summary: RunSummary,
    checked: CheckedRows,
    changes: Changes,
    outcome: LoadOutcome | None,
    folder: str,
) -> dict[str, str]:
    """Write the quarantine CSV (every flagged row and why), the not-landed CSV, the dry-run diff.

    Returns what each file holds → its path, for the summary.
    """
    files: dict[str, str] = {}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = Path(folder)
    if summary.dry_run and changes.to_send.height:
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"{stamp}-{summary.run}-dry-run-diff.csv"
        changes.to_send.rename({"previous": "old", "quantity": "new"}).select(
            "vendorSku", "id", "old", "new"
        ).write_csv(path)
        files["What would change"] = str(path)
    if checked.flagged.height:
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"{stamp}-{summary.run}-quarantine.csv"
        checked.flagged.drop("row_id").write_csv(path)
        files["Quarantine report"] = str(path)
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
        files["Products that did not land"] = str(path)
    return files


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


def run_event_payload(result: object, reason: str | None = None) -> dict[str, object]:
    """The counts an automation can test, from a summary or from the error that ended the run."""
    summary = getattr(result, "summary", result)
    extra: dict[str, object] = {} if reason is None else {"reason": reason}
    if not isinstance(summary, RunSummary):
        return {**extra, "error": f"{type(result).__name__}: {result}"[:2000]}
    payload: dict[str, object] = {
        **extra,
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
    if summary.token_refreshes is not None:
        payload["token_refreshes"] = summary.token_refreshes
    if summary.failures:
        payload["error"] = "; ".join(summary.failures)[:2000]
    return payload


def emit_run_event(flow: object, flow_run: Any, state: Any) -> None:
    """Prefect flow hook: one event per run, `inventory-sync.run.succeeded` or `.failed`.

    A crashed run runs no hook; the automation "inventory-sync crash report" emits its event.
    """
    result = state.result(raise_on_failure=False) if state.is_final() else None
    succeeded = state.is_completed()
    payload = run_event_payload(result, reason=None if succeeded else "failed")
    labels = {
        # labels, because automations match labels, not payload values
        "inventory-sync.quarantined": _yes(payload.get("rows_dropped")),
        "inventory-sync.rejected": _yes(payload.get("products_rejected")),
        "inventory-sync.drifted": _yes(payload.get("products_drifted")),
        "inventory-sync.dry-run": "true" if payload.get("dry_run") else "false",
    }
    if not succeeded:
        labels["inventory-sync.reason"] = "failed"
    emit_event(
        event=EVENT_SUCCEEDED if succeeded else EVENT_FAILED,
        resource={
            "prefect.resource.id": f"inventory-sync.run.{flow_run.id}",
            "prefect.resource.name": flow_run.name,
            **labels,
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
