"""Shared fixtures: a real Prefect server (once per session) and the sandbox API on loopback."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The dev tooling (sandbox, devstack) is not in the installed package: the processes the tests
# start find it in this checkout, as `inventory-sync-dev` does.
os.environ["PYTHONPATH"] = os.pathsep.join(
    dict.fromkeys(
        [
            str(Path(__file__).resolve().parents[1]),
            *os.environ.get("PYTHONPATH", "").split(os.pathsep),
        ]
    )
).strip(os.pathsep)

from builders import TOKEN
from postgres import PostgresServer

from sandbox.server import SandboxServer

# No per-example deadline: on a shared 2-core machine a slow example is load, not a bug.
settings.register_profile("shared-machine", deadline=None)
settings.load_profile("shared-machine")

SERVER_FIXTURES = frozenset({"prefect_api", "postgres", "server_stack", "unattended"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test that needs a Prefect server or PostgreSQL, so `make test-fast` skips it."""
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect server (subprocess, temporary SQLite) for the whole session; its API URL."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_LOGGING_TO_API_BATCH_INTERVAL,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=60),
        temporary_settings(
            {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOGGING_TO_API_BATCH_INTERVAL: 0.3}
        ),
    ):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """The sandbox API on a free loopback port, empty until a test loads a catalog."""
    server = SandboxServer(products=[], token=TOKEN, max_products_per_call=1000, port=0)
    with server:
        yield server


WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path, sandbox: SandboxServer) -> WriteConfig:
    """Write an inventory-sync.toml in tmp_path pointing at the sandbox; returns its path."""

    def write(
        warehouses: str,
        *,
        lightspeed: str = "",
        catalog: str = "",
        guards: str = "max_zeroed_share = 1.0\nmax_units_drop_share = 1.0",
        name: str = "inventory-sync.toml",
    ) -> Path:
        """Guards are off unless a test sets them: most tests are not about them."""
        text = f"""
            [lightspeed]
            base_url = "{sandbox.url}"
            retry_backoff_seconds = 0.05
            read_backoff_seconds = 0.05
            timeout_seconds = 5
            {textwrap.dedent(lightspeed)}

            [catalog]
            {textwrap.dedent(catalog)}

            [guards]
            approval_timeout_seconds = 60
            {textwrap.dedent(guards)}
        """
        path = tmp_path / name
        path.write_text(textwrap.dedent(text) + textwrap.dedent(warehouses), encoding="utf-8")
        return path

    return write


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LIGHTSPEED_TOKEN", TOKEN)
    monkeypatch.delenv("LIGHTSPEED_BASE_URL", raising=False)
    return TOKEN


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on a free loopback port for the whole session."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()
