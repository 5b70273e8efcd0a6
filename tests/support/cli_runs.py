"""Running the `inventory-sync` CLI as a user does, and reading back what its run left on the server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

CLI = [sys.executable, "-m", "flows.cli"]


def cli_env(token: str = "test-token", api: str | None = None, **env: str) -> dict[str, str]:
    """This process's environment without its Prefect API and Lightspeed settings, plus these."""
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("LIGHTSPEED_", "PREFECT_API"))
    }
    # a temporary Prefect server (no PREFECT_API_URL) can take over 20 s to start on a busy box
    environ |= {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    environ |= {"LIGHTSPEED_TOKEN": token, **env}
    if api:
        environ["PREFECT_API_URL"] = api
    return environ


def cli(
    *args: str,
    api: str | None,
    cwd: Path,
    token: str = "test-token",
    program: list[str] = CLI,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run the command to its end; its output and exit status."""
    return subprocess.run(
        [*program, *args],
        cwd=cwd,
        env=cli_env(token, api, **env),
        capture_output=True,
        text=True,
        timeout=180,
    )


def flow_run_of(config: Path, timeout: float = 30) -> Any:
    """The newest flow run of this config on the server (PREFECT_API_URL of this process)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
            mine = [r for r in runs if r.parameters.get("config_path") == str(config)]
            if mine or time.monotonic() > deadline:
                assert mine, f"no flow run of {config} on the server"
                return mine[0]
            time.sleep(0.3)


def run_logs(flow_run_id: Any, timeout: float = 30) -> list[str]:
    """Every log message of the flow run and its task runs, as the UI shows them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            finished = any(
                log.task_run_id is None and log.message.startswith("Finished in state")
                for log in logs
            )
            if finished or time.monotonic() > deadline:
                return [log.message for log in logs]
            time.sleep(0.3)


def run_events(api: str, flow_run_id: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """The run's `inventory-sync.run.*` events (its on-failure or on-completion hook)."""
    body = {
        "filter": {
            "event": {"prefix": ["inventory-sync.run."]},
            "resource": {"id": [f"inventory-sync.run.{flow_run_id}"]},
            "occurred": {"since": "2000-01-01T00:00:00Z"},
        },
        "limit": 10,
    }
    deadline = time.monotonic() + timeout
    while True:
        events = httpx.post(f"{api}/events/filter", json=body, timeout=10).json()["events"]
        if events or time.monotonic() > deadline:
            return list(events)
        time.sleep(0.3)
