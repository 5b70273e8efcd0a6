"""`inventory-sync watch`: the feed watcher daemon (flows/watcher/) in this process."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from tasks.config.errors import ConfigError


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
    from flows.watcher.daemon import WatchError, run_watcher

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
