"""`inventory-sync deploy`: set up a Prefect server to run the sync (flows/server/setup.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import typer

from flows.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from tasks.config.errors import ConfigError


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
    from flows.server.setup import AUTOMATIONS_FILE, PREFECT_FILE, SetupOptions

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

    from flows.server.setup import SetupError, set_up_server

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
