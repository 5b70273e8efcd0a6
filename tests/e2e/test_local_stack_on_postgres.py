"""`make run`'s command on a PostgreSQL-backed Prefect server: deployments, a run, then Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx
import psycopg
import pytest

from devstack.demo import demo_catalog, expected_quantities
from devstack.local_stack import DEPLOYMENTS, FLOW_NAME, prefect_client
from devstack.processes import descendants, free_port, is_running, port_in_use, stop_processes

pytestmark = pytest.mark.slow

READY = "Press Ctrl-C to stop everything."
STARTUP_TIMEOUT = 300


@dataclass
class CliStack:
    """`inventory-sync-dev local-stack` running in a subprocess, and what it printed."""

    process: subprocess.Popen[bytes]
    output: Path
    port: int
    database_url: str
    home: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def text(self) -> str:
        return self.output.read_text("utf-8", errors="replace")

    def printed(self, pattern: str) -> str:
        match = re.search(pattern, self.text())
        assert match, f"{pattern!r} not in the output:\n{self.text()}"
        return match[1]


@pytest.fixture(scope="module")
def cli_stack(postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    """The stack `make run` starts, its Prefect server on a database of the test PostgreSQL."""
    root = tmp_path_factory.mktemp("pg-stack")
    postgres.create_database("prefect")
    database_url = postgres.url("prefect", driver="postgresql+asyncpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LIGHTSPEED_"))}
    env |= {
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    port = free_port()
    output = root / "output.txt"
    command = [sys.executable, "-m", "devstack.cli", "local-stack", "--port", str(port)]
    command += ["--sandbox-port", "0", "--dir", str(root / "demo"), "--timezone", "Europe/Paris"]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    stack = CliStack(process, output, port, database_url, root / "prefect")
    family = set()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while READY not in stack.text():
            assert process.poll() is None, f"local-stack exited early:\n{stack.text()}"
            assert time.monotonic() < deadline, f"not ready in time:\n{stack.text()}"
            family |= descendants(process.pid)
            time.sleep(0.5)
        yield stack
    finally:
        family |= descendants(process.pid)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        stop_processes(family, grace=0)  # whatever Ctrl-C left behind: the test says so


def test_the_run_make_run_starts_is_recorded_in_postgresql(cli_stack):
    run_id = UUID(cli_stack.printed(r"Triggered a run of .*?/runs/flow-run/([0-9a-f-]{36})"))
    sandbox_url = cli_stack.printed(r"Sandbox Lightspeed API on (http://\S+)")
    with prefect_client(cli_stack.api_url) as client:
        run = client.read_flow_run(run_id)
        deployments = [client.read_deployment_by_name(f"{FLOW_NAME}/{n}") for n in DEPLOYMENTS]
    assert run.state.type.value == "COMPLETED", cli_stack.text()
    assert [[s.active for s in d.schedules] for d in deployments] == [[True], [True], []]
    assert {s.schedule.timezone for d in deployments for s in d.schedules} == {"Europe/Paris"}

    with psycopg.connect(cli_stack.database_url.replace("+asyncpg", "")) as db:
        state = db.execute("SELECT state_type FROM flow_run WHERE id = %s", (run_id,)).fetchone()
        chunks = db.execute(
            "SELECT count(*) FROM task_run WHERE flow_run_id = %s AND name LIKE 'chunk %%'",
            (run_id,),
        ).fetchone()
        keys = db.execute("SELECT key FROM artifact WHERE flow_run_id = %s", (run_id,)).fetchall()
    assert state == ("COMPLETED",)
    assert chunks == (3,)
    assert {"sync-summary", "quarantine", "load-progress"} <= {key for (key,) in keys}
    assert not (cli_stack.home / "prefect.db").exists(), "the server wrote SQLite, not PostgreSQL"

    held = httpx.get(f"{sandbox_url}/_sandbox/quantities", timeout=10).json()["quantities"]
    assert held == expected_quantities(demo_catalog())
    assert "Demo check: the sandbox holds the expected quantity" in cli_stack.text()


def test_ctrl_c_stops_every_process_and_frees_every_port(cli_stack):
    sandbox_port = int(cli_stack.printed(r"Sandbox Lightspeed API on http://127\.0\.0\.1:(\d+)"))
    family = descendants(cli_stack.process.pid)
    commands = [" ".join(p.cmdline()) for p in family if is_running(p)]
    assert any(" server start " in c for c in commands)
    assert any(" worker start " in c for c in commands)
    assert any(" watch --config " in c for c in commands)
    assert port_in_use(cli_stack.port) and port_in_use(sandbox_port)

    began = time.monotonic()
    os.killpg(cli_stack.process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    assert cli_stack.process.wait(60) == 0, cli_stack.text()
    print(f"stopped in {time.monotonic() - began:.1f} s")

    assert (
        "Stopped: the watcher, the worker, the Prefect server and the sandbox" in cli_stack.text()
    )
    assert [p for p in family if is_running(p)] == []
    assert not port_in_use(cli_stack.port) and not port_in_use(sandbox_port)
