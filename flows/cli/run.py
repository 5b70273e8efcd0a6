"""`inventory-sync run`: one sync in this process, its progress on stderr, its summary printed."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from uuid import UUID

import typer

from flows.cli.exits import EXIT_BUSY, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from tasks.config.errors import ConfigError
from tasks.config.paths import state_folder
from tasks.errors import SyncError
from tasks.state.lock import StateBusy, lock_for_next_run, lock_key

PROGRESS_EVERY_SECONDS = 10.0
RECORDING_TIMEOUT_SECONDS = 30.0  # for a temporary server to record a run before it stops
RECORDING_POLL_SECONDS = 0.2


def run(
    config: Path = typer.Option(..., "--config", "-c", help="the TOML configuration file"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="check and reconcile, show what would change, send nothing"
    ),
    full: bool = typer.Option(False, "--full", help="send every product, not only changes"),
    warehouse: list[str] = typer.Option(
        [], "--warehouse", "-w", help="sync only this warehouse (repeatable)"
    ),
    chunk_size: int | None = typer.Option(
        None, "--chunk-size", min=1, help="products per chunk (task run)"
    ),
    approve_large_changes: bool = typer.Option(
        False, "--approve-large-changes", help="send even if the change guard trips"
    ),
    refresh_catalog: bool = typer.Option(
        False, "--refresh-catalog", help="read the whole catalog from the API now, not the kept one"
    ),
    progress_every: float = typer.Option(
        PROGRESS_EVERY_SECONDS,
        "--progress-every",
        min=0,
        help="when stderr is not a terminal: a progress line this often (seconds; 0: none)",
    ),
) -> None:
    """Run the sync once and print its summary.

    Progress of the long stages shows on stderr: live in a terminal, else a line every
    --progress-every seconds.

    Exit status:
    0 every valid update landed.
    1 the run failed, or a chunk finally failed (the summary names what did not land).
    2 bad configuration or usage.
    3 another run of this config is in progress; nothing was done.
    """
    raise typer.Exit(
        run_once(
            config,
            progress_every=progress_every,
            dry_run=dry_run,
            full=full,
            warehouses=warehouse or None,
            chunk_size=chunk_size,
            approve_large_changes=approve_large_changes,
            refresh_catalog=refresh_catalog,
        )
    )


def run_once(
    config: Path, progress_every: float = PROGRESS_EVERY_SECONDS, **parameters: Any
) -> int:
    """Run the flow in this process; print the summary; return the exit status.

    The state's run lock is taken first, from the TOML alone, and the configuration checked
    before Prefect starts: a busy state or a bad file is told before anything heavy loads,
    and neither starts anything.
    """
    holder = f"an inventory-sync CLI run of {config}"
    early = state_folder(config)
    try:
        with ExitStack() as held:
            if early is not None:
                held.enter_context(lock_for_next_run(early, holder))
            from flows.process import prepare_process

            # before polars loads; Great Expectations imports on the other core meanwhile
            prepare_process(preload_validation=True)
            from tasks.config.settings import load_settings

            settings = load_settings(config)
            from tasks.config.secrets import resolve_state

            state = resolve_state(settings.state)  # a folder's file, or a shared database
            if early is None or lock_key(early) != lock_key(state):
                held.enter_context(lock_for_next_run(state, holder))
            return _run_flow(config, progress_every, parameters)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    except StateBusy as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_BUSY


def _run_flow(config: Path, progress_every: float, parameters: dict[str, Any]) -> int:
    """The flow run itself, with the progress display; its outcome as an exit status."""
    from prefect.settings import PREFECT_API_URL

    from flows.cli.progress import showing_progress
    from flows.sync import SyncFailed, inventory_sync
    from tasks.report.summary import RunSummary

    on_a_temporary_server = not PREFECT_API_URL.value()
    with showing_progress(progress_every):
        state = inventory_sync(config_path=str(config), return_state=True, **parameters)
    if on_a_temporary_server and state.state_details.flow_run_id is not None:
        wait_until_recorded(state.state_details.flow_run_id)
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunSummary):
        typer.echo(result.render())
        return EXIT_OK
    if isinstance(result, SyncFailed):
        typer.echo(result.summary.render())
        return EXIT_FAILED
    if isinstance(result, SyncError):
        typer.echo(f"error: {result}", err=True)
        return exit_status(result)
    typer.echo(f"error: the run failed: {type(result).__name__}: {result}", err=True)
    return EXIT_FAILED


def wait_until_recorded(flow_run_id: UUID, timeout: float = RECORDING_TIMEOUT_SECONDS) -> bool:
    """Prefect's temporary server stops when this process exits: first let it record the run.

    Its task runs are recorded from events, after the run; stopping the server in the middle
    cancels the recording, which prints the server's traceback. Done when every event is sent
    and the run's task runs stand recorded in a final state, twice in a row; False on timeout.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout)
    deadline, last = time.monotonic() + timeout, None
    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_task_runs(flow_run_filter=this_run)
            seen = (len(runs), sum(1 for r in runs if r.state is not None and r.state.is_final()))
            if seen == last and seen[0] == seen[1]:
                return True
            last = seen
            time.sleep(RECORDING_POLL_SECONDS)
    return False


def exit_status(error: SyncError) -> int:
    """The exit status a cron wrapper can tell apart: usage, busy, or a failed run."""
    if isinstance(error, ConfigError):
        return EXIT_USAGE
    if isinstance(error, StateBusy):
        return EXIT_BUSY
    return EXIT_FAILED
