"""`inventory-sync-dev`: the local stand-ins for development: the sandbox API, the demo, the local stack."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Development tools: a local Lightspeed-compatible API, the demo, a local Prefect stack.",
)


@app.command()
def sandbox(
    port: int = typer.Option(8765, "--port", help="port on 127.0.0.1"),
    host: str = typer.Option("127.0.0.1", "--host"),
    catalog: Path | None = typer.Option(None, "--catalog", help="catalog JSON to serve"),
    max_products: int = typer.Option(1000, "--max-products", help="largest PUT accepted (413)"),
    access_token_seconds: float = typer.Option(
        900, "--access-token-seconds", min=1, help="life of the OAuth access tokens it issues"
    ),
) -> None:
    """Serve the local Lightspeed-compatible API; the token is $LIGHTSPEED_TOKEN or 'sandbox-token'.

    It also issues OAuth tokens (docs/authentication.md): POST /_sandbox/oauth/grant hands out
    a first refresh token, as Lightspeed's API setup does.
    """
    from sandbox.server import serve

    token = os.environ.get("LIGHTSPEED_TOKEN") or "sandbox-token"
    source = "$LIGHTSPEED_TOKEN" if os.environ.get("LIGHTSPEED_TOKEN") else "the default"
    catalog_path = str(catalog) if catalog else None
    serve(
        host,
        port,
        catalog_path,
        token,
        max_products,
        token_source=source,
        access_token_seconds=access_token_seconds,
    )


@app.command()
def demo(
    folder: Path = typer.Option(Path("demo"), "--dir", help="where the demo config and feeds live"),
) -> None:
    """Write demo feeds for four warehouses, serve the sandbox, sync once, check the result."""
    from devstack.demo import run_demo

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
    from devstack.local_stack import run_local_stack

    raise typer.Exit(run_local_stack(home, folder, port, sandbox_port, timezone))


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
