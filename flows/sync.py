"""The inventory sync flow, stage by stage.

catalog (tasks/lightspeed/catalog) ∥ extract (tasks/sources/extract) → feed ages (tasks/guards)
→ check rows (tasks/checks/rows) → reconcile (tasks/reconcile) → check payload
(tasks/checks/payload) → delta (tasks/delta) → change guard (tasks/guards) → load
(tasks/lightspeed/load) → read-back (tasks/lightspeed/read_back) → summary
(tasks/report/summary) → publish (tasks/report/publish).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import uuid4

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.process import prepare_process
from tasks.checks.payload import check_payload_task
from tasks.checks.rows import check_rows_task
from tasks.checks.suites import preload as preload_validation
from tasks.config.secrets import resolve_state
from tasks.config.settings import apply_run_options, load_settings, select_warehouses
from tasks.delta import plan_changes
from tasks.errors import SyncError
from tasks.guards import ask_for_approval, guard_feed_ages, measure_change_guard
from tasks.lightspeed.account_limit import ensure_account_limit
from tasks.lightspeed.auth import resolve_credentials, sign_in
from tasks.lightspeed.catalog import read_catalog_task, settle_catalog
from tasks.lightspeed.chunks import chunk_size_for
from tasks.lightspeed.client import retry_policy
from tasks.lightspeed.contract import MAX_QUANTITY
from tasks.lightspeed.load import load
from tasks.lightspeed.read_back import audited_share, read_back
from tasks.reconcile import reconcile_task
from tasks.report.publish import emit_run_event, publish_artifacts, write_files
from tasks.report.retention import prune_reports
from tasks.report.summary import RunSummary, summarize
from tasks.sources.extract import archive_processed, extract_all
from tasks.state.store import StateStore

CATALOG_RETRIES = 2  # each resumes the refresh from the last page kept; pages retry per GET


class SyncFailed(SyncError):
    """Some valid updates did not land; the summary says which chunks and products."""

    def __init__(self, summary: RunSummary) -> None:
        super().__init__(
            f"{summary.chunks_failed} chunk(s) failed; "
            f"{summary.products_not_landed} product(s) did not land:\n"
            + "\n".join(summary.failures)
        )
        self.summary = summary


@flow(
    name="inventory-sync",
    task_runner=ThreadPoolTaskRunner(max_workers=8),  # type: ignore[arg-type]
    on_completion=[emit_run_event],
    on_failure=[emit_run_event],
)
def inventory_sync(
    config_path: str = "inventory-sync.toml",
    dry_run: bool = False,
    full: bool = False,
    warehouses: list[str] | None = None,
    chunk_size: Annotated[int, Field(ge=1, le=100_000)] | None = None,
    approve_large_changes: bool = False,
    refresh_catalog: bool = False,
) -> RunSummary:
    """Push each product's available quantity, reconciled from every warehouse, to Lightspeed.

    Args:
        config_path: The TOML configuration file; relative paths inside it are read from its folder.
        dry_run: Read, check and reconcile everything, show what would change, send nothing.
        full: Send every product, not only those that changed since the last push.
        warehouses: Read only these warehouses (by name); the others count with their last good
            feed, so no product gets a partial sum. Empty: read all warehouses.
        chunk_size: Products per chunk (one task run each) for this run only; they are sent in
            PUTs of lightspeed.request_size. Empty: lightspeed.chunk_size, else a size that
            keeps the run to at most 50 chunks.
        approve_large_changes: Send even if the change guard trips (after a stock count, say).
        refresh_catalog: Read the whole catalog from the API now, not the one kept between
            runs (a full run always does): for products added or re-flagged since.
    """
    prepare_process()  # a no-op where the entry point did it (CLI, flow-run process)
    logger = get_run_logger()
    run_id = str(flow_run.id or uuid4())  # what the state records; names can repeat
    run = flow_run.name or run_id
    settings = apply_run_options(load_settings(config_path), chunk_size)
    api = settings.lightspeed
    state = resolve_state(settings.state)
    credentials = resolve_credentials(api, state, config_path)
    signed_in = sign_in(credentials)  # a refused refresh token fails here, before anything is sent
    preload_validation()  # Great Expectations loads while the feeds are read
    if api.account_limit:  # requests in flight on the API account, across every run on it
        logger.info("account limit %s", ensure_account_limit(api))
    with StateStore(state).exclusive(run) as store:  # no two runs of this tenant overlap
        catalog_future = read_catalog_task.with_options(
            **retry_policy(api, CATALOG_RETRIES)
        ).submit(settings.catalog, api, credentials, state, refresh=full or refresh_catalog)
        extracted = extract_all(select_warehouses(settings, warehouses))
        extracted, stale_notes = guard_feed_ages(
            extracted, settings.warehouses, store, datetime.now(UTC)
        )
        # kept for later runs while this one checks and sends; current only once it is good
        ahead = None if dry_run else store.write_feed_rows_ahead(extracted.feeds, run)
        catalog_read = settle_catalog(
            catalog_future.result(raise_on_failure=False), settings.catalog, state
        )
        catalog = catalog_read.frame

        checked = check_rows_task(extracted.feeds, catalog)
        plan = reconcile_task(
            checked, catalog, settings.warehouses, settings.catalog.absent, MAX_QUANTITY
        )
        check_payload_task(plan.payload, catalog)
        changes = plan_changes(plan.payload, store.last_pushed(), catalog, full)
        guard = measure_change_guard(changes.all, settings.guards)
        if guard.tripped and not (dry_run or approve_large_changes):
            ask_for_approval(guard, settings.guards.approval_timeout_seconds)

        outcome = audit = None
        if not dry_run:
            outcome = load(changes.to_send, api, credentials, state, run_id)
            if settings.guards.read_back:
                pages = settings.guards.read_back_pages
                audit = read_back(changes.to_send, outcome, catalog, api, pages, credentials, store)

        summary = summarize(
            run, dry_run, extracted, checked, plan, changes, outcome,
            chunk_size=chunk_size_for(changes.to_send.height, api), request_size=api.request_size,
            read_back=audit, notes=stale_notes, guard=guard,
            catalog=catalog_read, audited=audited_share(store, catalog.height),
            tokens=signed_in.used(),
        )  # fmt: skip
        summary.files = write_files(summary, checked, changes, outcome, settings.report.dir)
        prune_reports(settings.report.dir, settings.report.keep_days)  # a year stays bounded
        publish_artifacts(summary, checked, changes, settings.report.max_artifact_rows)
        logger.info("%s (full summary: the %r artifact)", summary.headline(), "sync-summary")
        if outcome is not None and (summary.ok or outcome.products_sent):
            store.record_good_feeds(extracted.feeds, run, ahead)  # their data is (partly) landed
        if not summary.ok:
            raise SyncFailed(summary)
        if outcome is not None:
            archive_processed(extracted, settings.warehouses)
        return summary
