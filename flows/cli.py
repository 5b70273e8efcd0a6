"""The `inventory-sync` command: run the sync once, or set up a Prefect server to run it."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from contextlib import ExitStack, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import typer

from tasks.config.errors import ConfigError
from tasks.config.paths import state_folder
from tasks.errors import SyncError
from tasks.run_lock import StateBusy, lock_for_next_run, lock_key

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Keep available quantities on Lightspeed's B2B marketplace true to your warehouses.",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3
PROGRESS_EVERY_SECONDS = 10.0


@app.callback()
def main_options() -> None:
    """Keep available quantities on Lightspeed's B2B marketplace true to your warehouses."""


@app.command()
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
    before Prefect starts: a busy state is told in a fraction of a second, a bad file in one,
    and neither starts anything.
    """
    holder = f"an inventory-sync CLI run of {config}"
    early = state_folder(config)
    try:
        with ExitStack() as held:
            if early is not None:
                held.enter_context(lock_for_next_run(early, holder))
            from tasks.checks.suites import preload

            preload()  # Great Expectations imports on the other core while Prefect loads here
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
    from flows.progress_display import showing_progress
    from flows.sync import SyncFailed, inventory_sync
    from tasks.summary import RunSummary

    with showing_progress(progress_every):
        state = inventory_sync(config_path=str(config), return_state=True, **parameters)
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


def exit_status(error: SyncError) -> int:
    """The exit status a cron wrapper can tell apart: usage, busy, or a failed run."""
    if isinstance(error, ConfigError):
        return EXIT_USAGE
    if isinstance(error, StateBusy):
        return EXIT_BUSY
    return EXIT_FAILED


@app.command()
def deploy(
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        envvar="INVENTORY_SYNC_CONFIG",
        help="the configuration file the runs read, as the worker's machine sees it",
    ),
    configs: Path | None = typer.Option(
        None,
        "--configs",
        help="instead of --config: a folder of supplier configurations, each deployed on its own",
    ),
    timezone: str = typer.Option(
        "UTC", "--timezone", envvar="INVENTORY_SYNC_TIMEZONE", help="timezone of the schedules"
    ),
    notify: str | None = typer.Option(
        None,
        "--notify",
        help="notification block for the alerts, NAME or TYPE/NAME; without it they are only recorded",
    ),
    missed_heartbeats: int = typer.Option(
        3, "--missed-heartbeats", min=1, help="a run that misses this many heartbeats is Crashed"
    ),
    no_success_after: str = typer.Option(
        "45m", "--no-success-after", help="alert when no run has succeeded for this long"
    ),
    late_after: str = typer.Option(
        "10m", "--late-after", help="alert when a scheduled run has been Late for this long"
    ),
    prefect_file: Path = typer.Option(
        None, "--prefect-file", help="the deployments (default: deployments/prefect.yaml)"
    ),
    automations_file: Path = typer.Option(
        None, "--automations-file", help="the automations (default: deployments/automations.yaml)"
    ),
    pool_limit: int | None = typer.Option(
        None, "--pool-limit", min=1, help="with --configs: runs at once on the pool (no limit)"
    ),
    worker_folder: Path | None = typer.Option(
        None, "--worker-folder", help="with --configs: where the workers see that folder"
    ),
) -> None:
    """Set up the Prefect server at $PREFECT_API_URL: work pool, deployments, automations.

    With --configs, each supplier configuration of the folder gets its own deployments (named
    after its state.tenant, with its config_path and tags) and each API account with
    lightspeed.account_limit its request limit. Creates what is missing and updates what
    differs; running it again changes nothing.
    """
    target = configs if configs is not None else config
    if target is None or (config is not None and configs is not None):
        typer.echo("error: give --config FILE or --configs FOLDER (one of the two)", err=True)
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(
        deploy_to_server(
            target,
            suppliers=configs is not None,
            pool_limit=pool_limit,
            worker_folder=worker_folder,
            timezone=timezone,
            notify=notify,
            missed_heartbeats=missed_heartbeats,
            no_success_after=no_success_after,
            late_after=late_after,
            prefect_file=prefect_file,
            automations_file=automations_file,
        )
    )


def deploy_to_server(config: Path, **choices: Any) -> int:
    """Check the options, set the server up, say what changed; return the exit status."""
    from tasks.server_setup import AUTOMATIONS_FILE, PREFECT_FILE, SetupOptions

    try:
        windows = _alert_windows(choices["no_success_after"], choices["late_after"])
        _check_timezone(choices["timezone"])
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    from prefect.settings import PREFECT_API_URL  # seconds of imports: only for good options

    api_url = PREFECT_API_URL.value()
    if not api_url:
        typer.echo(
            "error: PREFECT_API_URL is not set: point it at your Prefect server's API, e.g. "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api",
            err=True,
        )
        return EXIT_USAGE
    if choices["suppliers"] and not config.is_dir():
        typer.echo(f"error: --configs {config}: not a folder", err=True)
        return EXIT_USAGE
    if not choices["suppliers"] and not config.is_file():
        typer.echo(f"warning: {config} is not a file here; the worker's machine must have it")
    options = SetupOptions(
        config_path=config,
        suppliers=choices["suppliers"],
        pool_limit=choices["pool_limit"],
        worker_folder=choices["worker_folder"],
        timezone=choices["timezone"],
        notify=choices["notify"],
        missed_heartbeats=choices["missed_heartbeats"],
        prefect_file=choices["prefect_file"] or PREFECT_FILE,
        automations_file=choices["automations_file"] or AUTOMATIONS_FILE,
        **windows,
    )
    return _set_up(api_url, options)


def _alert_windows(no_success_after: str, late_after: str) -> dict[str, timedelta]:
    """The two alert windows as durations; ValueError names the option that is wrong."""
    from pydantic import TypeAdapter, ValidationError

    from tasks.config.fields import Duration

    windows = {}
    for option, text in (("no_success_after", no_success_after), ("late_after", late_after)):
        flag = "--" + option.replace("_", "-")
        try:
            windows[option] = TypeAdapter(Duration).validate_python(text)
        except ValidationError:
            raise ValueError(f'{flag}: not a duration: {text!r} (e.g. "45m")') from None
        if windows[option].total_seconds() < 10:
            raise ValueError(f"{flag}: Prefect needs at least 10 seconds")
    return windows


def _check_timezone(name: str) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"--timezone: unknown timezone {name!r}") from None


def _set_up(api_url: str, options: Any) -> int:
    """Run the setup, printing each change as it is made, and a last line on the alerts."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    from tasks.server_setup import SetupError, set_up_server

    typer.echo(f"Setting up the Prefect server at {api_url}")
    try:
        report = set_up_server(api_url, options, say=lambda line: typer.echo(f"  {line}"))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    except SetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_FAILED
    except PrefectHTTPStatusError as exc:
        typer.echo(f"error: the Prefect server refused a request: {exc}", err=True)
        return EXIT_FAILED
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot talk to the Prefect server at {api_url}: {exc}", err=True)
        return EXIT_FAILED
    alerts = (
        f"alerts are sent through the block {options.notify!r}"
        if options.notify
        else "alerts are recorded only (Automations → an automation → Events); "
        "pass --notify BLOCK to send them"
    )
    typer.echo(
        f"Done: runs send a heartbeat every {report.heartbeat_seconds} s and are Crashed after "
        f"{options.missed_heartbeats} missed; {alerts}."
    )
    return EXIT_OK


@app.command()
def watch(
    config: Path = typer.Option(..., "--config", "-c", help="the TOML configuration file"),
) -> None:
    """Watch the warehouses' feeds; each arrival starts a sync of what changed (until Ctrl-C).

    Needs PREFECT_API_URL and the deployments registered. Exit status: 0 stopped by SIGTERM or
    Ctrl-C; 1 the server lacks the deployment; 2 bad configuration or no PREFECT_API_URL.
    """
    raise typer.Exit(watch_feeds(config))


def watch_feeds(config: Path) -> int:
    """Run the watcher in this process until a signal stops it; return the exit status."""
    import logging

    from prefect.settings import PREFECT_API_URL

    from tasks.config.settings import load_settings

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    if not PREFECT_API_URL.value():
        typer.echo(
            "error: PREFECT_API_URL is not set: the watcher sends its events to a Prefect "
            "server, e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api",
            err=True,
        )
        return EXIT_USAGE
    from tasks.arrivals.watcher import WatchError, run_watcher

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    for chatty in ("httpx", "watchfiles"):  # a line per request, per file-system event
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        run_watcher(settings, config)
    except WatchError as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_FAILED
    return EXIT_OK


@app.command("auth")
def auth(
    config: Path = typer.Option(..., "--config", "-c", help="the TOML configuration file"),
    check: bool = typer.Option(
        False, "--check", help="only refresh once with the stored token (for monitoring)"
    ),
) -> None:
    """Store the refresh token from Lightspeed's API setup, read from standard input or a prompt.

    It makes one refresh and says when the access token expires. With --check it only
    refreshes. Exit status: 0 an access token was issued; 1 not (the message says why); 2 bad
    configuration or usage (1 with --check).
    """
    from flows.auth_command import authorize

    raise typer.Exit(authorize(config, check))


@app.command("migrate-state")
def migrate_state(
    config: Path = typer.Option(
        ..., "--config", "-c", help="the configuration whose state.url receives the state"
    ),
    source: str = typer.Option(
        ..., "--from", help="the state to copy: a state.dir folder, or sqlite:///<file>"
    ),
    from_tenant: str = typer.Option(
        "default", "--from-tenant", help="the tenant to copy from the source"
    ),
    replace: bool = typer.Option(
        False, "--replace", help="overwrite state the target already holds for its tenant"
    ),
) -> None:
    """Copy a state (e.g. one machine's SQLite) into the configuration's state database.

    Both states are locked meanwhile, so no sync runs on either; the source is left as it was.
    Exit status: 0 copied; 1 refused (nothing copied); 2 bad configuration or usage; 3 a run
    holds either state.
    """
    raise typer.Exit(migrate_once(config, source, from_tenant, replace))


def migrate_once(config: Path, source: str, from_tenant: str, replace: bool) -> int:
    """Copy the state; print what was copied; return the exit status."""
    from tasks.config.secrets import resolve_state
    from tasks.config.settings import load_settings
    from tasks.state import StateLocation
    from tasks.state.migrate import RUN_NAME, MigrationRefused, copy_tenant, opened_source

    try:
        target_location = resolve_state(load_settings(config).state)
        source_location = StateLocation.of(source, from_tenant)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    if (source_location.url, source_location.tenant) == (
        target_location.url,
        target_location.tenant,
    ):
        typer.echo(f"error: the source is the target ({target_location})", err=True)
        return EXIT_USAGE
    from tasks.state import StateStore

    try:
        target = StateStore(target_location)
        with opened_source(source_location) as origin, target.exclusive(RUN_NAME):
            migrated = copy_tenant(origin, target, replace)
    except MigrationRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_FAILED
    except StateBusy as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_BUSY
    typer.echo(f"Copied the state of {source_location} into {target_location}:")
    typer.echo(f"  rows: {migrated.describe()}")
    typer.echo("Runs with this configuration now use it; the source was left unchanged.")
    return EXIT_OK


def main() -> None:
    """The console script: the command, then an exit without the interpreter's teardown."""
    try:
        app()
        status: object = EXIT_OK
    except SystemExit as exc:
        status = exc.code
    exit_now(status)


def exit_now(status: object) -> NoReturn:
    """Exit as Python would, minus freeing every object one by one: 1.4 s after a 1M run.

    What a normal exit does that matters happens first, in the same order: other non-daemon
    threads are waited for, then the atexit handlers run (Prefect sends its last logs and
    events, logging flushes its files, the validation side process is stopped), then the
    standard streams are flushed. Only the teardown of modules and objects is skipped.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    if isinstance(status, str):  # sys.exit("message"): the message on stderr, status 1
        print(status, file=sys.stderr)
        status = EXIT_FAILED
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # closed by the reader (a pipe to head, say)
            stream.flush()
    os._exit(status if isinstance(status, int) else EXIT_OK if status is None else EXIT_FAILED)


if __name__ == "__main__":
    main()
