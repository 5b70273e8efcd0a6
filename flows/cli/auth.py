"""`inventory-sync auth`: store the first refresh token (never from argv) and prove it works."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from pydantic import SecretStr

from flows.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE

PROMPT = "Refresh token (from Lightspeed's API setup; not echoed): "


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
    raise typer.Exit(authorize(config, check))


def read_refresh_token() -> str:
    """The token from standard input when it is piped, else from a prompt that does not echo."""
    if sys.stdin is not None and not sys.stdin.isatty():
        return sys.stdin.read().strip()
    return getpass.getpass(PROMPT).strip()


def authorize(config: Path, check: bool, read_token: Callable[[], str] = read_refresh_token) -> int:
    """Store a refresh token and make one refresh, or (check) only the refresh; the exit status.

    Exit status: 0 an access token was issued; 1 it was not (the message says why and what to
    do); 2 bad configuration or usage (with --check: 1, so monitoring sees one failure code).
    """
    from tasks.config.errors import ConfigError
    from tasks.config.secrets import resolve_state
    from tasks.config.settings import load_settings
    from tasks.lightspeed.auth import (
        AuthFailed,
        AuthUnavailable,
        OAuthCredentials,
        resolve_credentials,
    )
    from tasks.state.tokens import LockTimeout, RefreshTokens, whoami

    usage = EXIT_FAILED if check else EXIT_USAGE
    try:
        settings = load_settings(config)
        state = resolve_state(settings.state)
        credentials = resolve_credentials(settings.lightspeed, state, config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        return usage
    if not isinstance(credentials, OAuthCredentials):
        typer.echo(
            f'error: {config}: lightspeed.auth is kind = "static" (one fixed token); set kind = '
            '"oauth" with client_id, client_secret and encryption_key to use refresh tokens',
            err=True,
        )
        return usage
    store = RefreshTokens(state, credentials.account, credentials.encryption_key)
    if not check:
        token = read_token()
        if not token or any(ch.isspace() for ch in token):
            typer.echo("error: no refresh token given (one line, on standard input)", err=True)
            return EXIT_USAGE
        try:
            with store.locked(timeout=120):  # not while a run is refreshing
                store.store(SecretStr(token), whoami("inventory-sync auth"))
        except LockTimeout as exc:
            typer.echo(f"error: another process is refreshing ({exc}); try again", err=True)
            return EXIT_FAILED
        typer.echo(
            f"Stored the refresh token for account {credentials.account!r}, encrypted, "
            f"in {state.url}."
        )
    provider = credentials.tokens()
    try:
        provider.bearer()
    except (AuthFailed, AuthUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_FAILED
    left = provider.expires_in()
    expires = datetime.now(UTC) + timedelta(seconds=left)
    typer.echo(
        f"OK: account {credentials.account!r}: Lightspeed issued an access token, valid until "
        f"{expires:%Y-%m-%d %H:%M:%S} UTC (in {left:.0f}s); the new refresh token is stored. "
        "Runs refresh it by themselves from now on."
    )
    return EXIT_OK
