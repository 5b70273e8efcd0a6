"""The `inventory-sync` command: run the sync once, serve the sandbox API, or run the demo."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from tasks.config import ConfigError, load_settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Keep available quantities on Lightspeed's B2B marketplace true to your warehouses.",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
    chunk_size: int | None = typer.Option(None, "--chunk-size", min=1, help="products per PUT"),
    approve_large_changes: bool = typer.Option(
        False, "--approve-large-changes", help="send even if the change guard trips"
    ),
) -> None:
    """Run the sync once and print its summary.

    Exit status: 0 every valid update landed; 1 the run failed or a chunk finally failed;
    2 bad configuration or usage.
    """
    raise typer.Exit(
        run_once(
            config,
            dry_run=dry_run,
            full=full,
            warehouses=warehouse or None,
            chunk_size=chunk_size,
            approve_large_changes=approve_large_changes,
        )
    )


def run_once(config: Path, **parameters: Any) -> int:
    """Run the flow in this process; print the summary; return the exit status."""
    try:
        load_settings(config)  # fail fast, before Prefect starts, on a bad file
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    from flows.sync import SyncFailed, inventory_sync
    from tasks.report import RunSummary

    state = inventory_sync(config_path=str(config), return_state=True, **parameters)
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunSummary):
        typer.echo(result.render())
        return EXIT_OK
    if isinstance(result, SyncFailed):
        typer.echo(result.summary.render())
        return EXIT_FAILED
    if isinstance(result, ConfigError):
        typer.echo(f"error: {result}", err=True)
        return EXIT_USAGE
    typer.echo(f"error: the run failed: {result}", err=True)
    return EXIT_FAILED


@app.command()
def sandbox(
    port: int = typer.Option(8765, "--port", help="port on 127.0.0.1"),
    host: str = typer.Option("127.0.0.1", "--host"),
    catalog: Path | None = typer.Option(None, "--catalog", help="catalog JSON to serve"),
    max_products: int = typer.Option(1000, "--max-products", help="largest PUT accepted (413)"),
) -> None:
    """Serve the local Lightspeed-compatible API; the token is $LIGHTSPEED_TOKEN or 'sandbox-token'."""
    from sandbox.server import serve

    token = os.environ.get("LIGHTSPEED_TOKEN") or "sandbox-token"
    source = "$LIGHTSPEED_TOKEN" if os.environ.get("LIGHTSPEED_TOKEN") else "the default"
    serve(host, port, str(catalog) if catalog else None, token, max_products, token_source=source)


@app.command()
def demo(
    folder: Path = typer.Option(Path("demo"), "--dir", help="where the demo config and feeds live"),
) -> None:
    """Write demo feeds for four warehouses, serve the sandbox, sync once, check the result."""
    from sandbox.demo import run_demo

    raise typer.Exit(run_demo(folder))


@app.command("local-stack")
def local_stack(
    port: int = typer.Option(4200, "--port", help="port of the Prefect server and UI on 127.0.0.1"),
    sandbox_port: int = typer.Option(
        8765, "--sandbox-port", help="port of the sandbox API on 127.0.0.1; 0: any free port"
    ),
    folder: Path = typer.Option(Path("demo"), "--dir", help="where the demo config and feeds live"),
    home: Path = typer.Option(
        Path(".prefect"), "--home", envvar="PREFECT_HOME", help="the Prefect server's home (SQLite)"
    ),
    timezone: str = typer.Option(
        "UTC", "--timezone", envvar="INVENTORY_SYNC_TIMEZONE", help="timezone of the schedules"
    ),
) -> None:
    """Start a Prefect server with its UI, the sandbox API, the deployments and a worker; run once.

    Everything stops on Ctrl-C.
    """
    from flows.local_stack import run_local_stack

    raise typer.Exit(run_local_stack(home, folder, port, sandbox_port, timezone))


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
