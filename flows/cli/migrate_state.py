"""`inventory-sync migrate-state`: copy a tenant's state into the configuration's database."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli.exits import EXIT_BUSY, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from tasks.config.errors import ConfigError
from tasks.state.lock import StateBusy


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
    from tasks.state.location import StateLocation
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
    from tasks.state.store import StateStore

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
