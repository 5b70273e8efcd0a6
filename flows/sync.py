"""The inventory sync flow: extract → check rows → reconcile → check payload → load → report."""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from tasks.catalog import read_catalog_task
from tasks.check_payload import check_payload_task
from tasks.check_rows import check_rows_task
from tasks.config import apply_run_options, load_settings, resolve_token
from tasks.extract import extract_all
from tasks.lightspeed import close_shared_clients, retry_policy
from tasks.load import load, split_into_chunks
from tasks.reconcile import reconcile_task
from tasks.report import RunSummary, emit_run_event, publish_artifacts, summarize, write_files


class SyncFailed(Exception):
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
    warehouses: list[str] | None = None,
    chunk_size: Annotated[int, Field(ge=1, le=100_000)] | None = None,
) -> RunSummary:
    """Push each product's available quantity, reconciled from every warehouse, to Lightspeed.

    Args:
        config_path: The TOML configuration file; relative paths inside it are read from its folder.
        dry_run: Read, check and reconcile everything, but send nothing.
        warehouses: Sync only these warehouses (by name). Products they do not list are left
            alone, whatever catalog.absent says. Empty: all warehouses.
        chunk_size: Products per PUT for this run only. Empty: lightspeed.chunk_size.
    """
    logger = get_run_logger()
    settings = apply_run_options(load_settings(config_path), warehouses, chunk_size)
    api = settings.lightspeed
    token = resolve_token(api)

    catalog_future = read_catalog_task.with_options(**retry_policy(api)).submit(
        settings.catalog, api, token
    )
    extracted = extract_all(settings.warehouses)
    catalog = catalog_future.result()
    logger.info("catalog: %d product(s) from %s", catalog.height, settings.catalog.source)

    checked = check_rows_task(extracted.rows(), catalog)
    safety_stock = {w.name: w.safety_stock for w in settings.warehouses}
    plan = reconcile_task(
        checked.good, checked.held_skus, catalog, safety_stock, settings.catalog.absent
    )
    payload = plan.payload
    check_payload_task(payload, catalog)

    try:
        outcome = None if dry_run else load(payload, api, token)
    finally:
        close_shared_clients()

    chunks = len(split_into_chunks(payload, api.chunk_size))
    summary = summarize(
        flow_run.name or "local", dry_run, extracted, checked, plan, outcome, chunks
    )
    write_files(summary, checked, outcome, settings.report.dir)
    publish_artifacts(summary, checked, settings.report.max_artifact_rows)
    logger.info("%s (full summary: the %r artifact)", summary.headline(), "sync-summary")
    if not summary.ok:
        raise SyncFailed(summary)
    return summary
