"""Prefect `process` workers standing in for machines: each its own folder, Prefect home and queue."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from devstack.local_stack import prefect_client
from devstack.processes import ManagedProcess, descendants, is_running

FLOW_ENTRYPOINT = (
    "flows.sync.inventory_sync"  # a module path: the code is installed, as in an image
)
RUN_TIMEOUT = 300


@dataclass
class Machine:
    """A worker on its own queue whose flow runs execute in its own folder, and nowhere else."""

    name: str
    folder: Path
    pool: str
    api_url: str
    env: Mapping[str, str] = field(default_factory=dict)
    queue: str | None = None  # None: a queue named after the machine
    limit: int | None = None  # flow runs at once on this machine (None: as many as come)
    worker: ManagedProcess | None = None

    def __post_init__(self) -> None:
        self.queue = self.queue or self.name

    def start(self) -> Machine:
        """Start the worker and wait until the server has heard from it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LIGHTSPEED_"))}
        env |= {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.folder / "prefect-home"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "GX_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool]
        command += ["--work-queue", str(self.queue), "--name", self.name, "--type", "process"]
        command += ["--limit", str(self.limit)] if self.limit else []
        log = self.folder / "worker.log"
        self.worker = ManagedProcess(f"worker {self.name}", command, env, log).start()
        deadline = time.monotonic() + 120
        with prefect_client(self.api_url) as client:
            while not any(
                w.name == self.name for w in client.read_workers_for_work_pool(self.pool)
            ):
                assert self.worker.exit_code() is None, (
                    f"{self.name} exited:\n{self.worker.log_tail()}"
                )
                assert time.monotonic() < deadline, f"{self.name} never polled:\n{log.read_text()}"
                time.sleep(0.3)
        return self

    def crash(self) -> None:
        """SIGKILL the worker and every process it started: the machine lost its power."""
        assert self.worker is not None and self.worker.pid is not None
        family = descendants(self.worker.pid)
        os.kill(self.worker.pid, signal.SIGKILL)
        for member in family:
            if is_running(member):
                member.kill()
        self.worker.stop()  # reaps it and closes its log

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def ran(self) -> set[str]:
        """The flow runs this machine's worker ran, by id, from its log.

        Both workers may try to take a run; the one that loses the race says it aborted.
        """
        assert self.worker is not None
        text = self.worker.log.read_text("utf-8", errors="replace")
        tried = re.findall(rf"Worker '{re.escape(self.name)}' submitting flow run '([\w-]+)'", text)
        lost = re.findall(r"Aborted submission of flow run '([\w-]+)'", text)
        return set(tried) - set(lost)

    def trigger(self, deployment_id: UUID, **parameters: Any) -> UUID:
        """A run of the deployment on this machine: its queue, executing in its folder."""
        with prefect_client(self.api_url) as client:
            run = client.create_flow_run_from_deployment(
                deployment_id,
                parameters=parameters or None,
                work_queue_name=self.queue,
                job_variables={"working_dir": str(self.folder)},
            )
        return UUID(str(run.id))


def create_pool(api_url: str, pool: str, queues: list[str]) -> None:
    """A `process` work pool with no concurrency limit of its own, and these queues."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    with prefect_client(api_url) as client:
        client.create_work_pool(
            WorkPoolCreate(
                name=pool,
                type="process",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            ),
            overwrite=True,
        )
        for queue in queues:
            client.create_work_queue(name=queue, work_pool_name=pool)


def deploy(api_url: str, name: str, pool: str, parameters: dict[str, Any], tags: list[str]) -> UUID:
    """A deployment of the sync flow on the pool, with no schedule and no concurrency limit."""
    from prefect.utilities.callables import parameter_schema

    from flows.sync import inventory_sync

    with prefect_client(api_url) as client:
        flow_id = client.create_flow(inventory_sync)
        return UUID(
            str(
                client.create_deployment(
                    flow_id=flow_id,
                    name=name,
                    entrypoint=FLOW_ENTRYPOINT,
                    work_pool_name=pool,
                    parameters=parameters,
                    tags=tags,
                    pull_steps=[],
                    parameter_openapi_schema=parameter_schema(inventory_sync).model_dump(),
                )
            )
        )


def wait_for(
    api_url: str, run_id: UUID, timeout: float = RUN_TIMEOUT, running: bool = False
) -> Any:
    """The flow run once its state is final (running=True: once it is Running, or final)."""
    deadline = time.monotonic() + timeout
    with prefect_client(api_url) as client:
        while True:
            run = client.read_flow_run(run_id)
            state = run.state
            if state is not None and (state.is_final() or (running and state.is_running())):
                return run
            assert time.monotonic() < deadline, f"run {run.name} still {state and state.name}"
            time.sleep(0.3)


def first_to_end(api_url: str, run_ids: list[UUID], timeout: float = RUN_TIMEOUT) -> Any:
    """The first of these flow runs to reach a final state."""
    deadline = time.monotonic() + timeout
    with prefect_client(api_url) as client:
        while True:
            for run_id in run_ids:
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    return run
            assert time.monotonic() < deadline, f"none of {len(run_ids)} runs ended in {timeout}s"
            time.sleep(0.3)
