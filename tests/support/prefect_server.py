"""Prefect servers beyond the session's own: the stack `make run` starts, and one on PostgreSQL."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from postgres import PostgresServer
from stack import ServerStack

from devstack.local_stack import DEPLOYMENTS, LocalStack
from devstack.processes import ManagedProcess, free_port, http_ok


@pytest.fixture(scope="session")
def server_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerStack]:
    """`make run`'s stack on a free port; its cron schedules paused so no run starts unbidden."""
    root: Path = tmp_path_factory.mktemp("stack")
    local = LocalStack(
        home=root / "prefect",
        folder=root / "demo",
        port=free_port(),
        sandbox_port=0,
        timezone="Europe/Amsterdam",
        worker_poll_seconds=1,
        say=lambda line: None,
        # the scheduler looks for new schedules every 60 s by default: tests need not wait that long
        server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"},
    )
    with local:
        stack = ServerStack(local)
        with stack.client() as client:
            for name in DEPLOYMENTS:
                deployment = client.read_deployment(local.deployments[name])
                stack.as_deployed[name] = deployment
                for schedule in deployment.schedules:
                    client.update_deployment_schedule(deployment.id, schedule.id, active=False)
        stack.settle()  # pausing withdraws future runs, not one already due
        yield stack


@pytest.fixture(scope="module")
def prefect_on_postgres(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A Prefect server of the module's own on a PostgreSQL database, as a shared server runs.

    The session's server (`prefect_api`) keeps its database in SQLite, which takes one writer at
    a time: six flow runs on two workers, their heartbeats and a test creating runs held its
    lock until the client's retries ran out (a clean-clone CI run timed out on "database is
    locked"). docs/operations.md says to give a server that many suppliers share a PostgreSQL database;
    the tests of many suppliers do the same. Yields its API URL, which is also the current
    Prefect setting until the module ends.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("prefect-on-postgres")
    name = f"prefect_{uuid4().hex[:8]}"
    postgres.create_database(name)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LIGHTSPEED_"))}
    env |= {
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres.url(name, driver="postgresql+asyncpg"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    server = ManagedProcess(
        "Prefect server on PostgreSQL", [*command, "--port", str(port)], env, root / "server.log"
    )
    try:
        server.start().wait_until_ready(lambda: http_ok(f"{api_url}/health"), timeout=180)
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        server.stop()
