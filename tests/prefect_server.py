"""The stack `make run` starts, shared by the server tests: one Prefect server, sandbox and worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stack import ServerStack

from devstack.local_stack import DEPLOYMENTS, LocalStack
from devstack.processes import free_port


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
