"""What the server tests ask of a running local stack: runs, waits, task runs, artifacts, events."""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx

from devstack.local_stack import LocalStack, prefect_client, wait_for_final_state

RUN_TIMEOUT = 240  # seconds for one flow run, from trigger to final state, on a busy 2-core box


@dataclass
class ServerStack:
    """A running LocalStack and what the tests ask of it."""

    local: LocalStack
    as_deployed: dict[str, Any] = field(default_factory=dict)  # deployments before schedules paused

    @property
    def api_url(self) -> str:
        return self.local.api_url

    @property
    def ui_url(self) -> str:
        return self.local.ui_url

    def client(self) -> Any:
        return prefect_client(self.api_url)

    def reset_sandbox(self) -> None:
        """The demo catalog as before any sync, and a sync that remembers pushing nothing."""
        self.local.sandbox.reset(products=copy.deepcopy(self.local.catalog))
        shutil.rmtree(
            self.local.folder / "state", ignore_errors=True
        )  # the demo config's state.dir, and the refresh token stored in it
        self.local.authorize()

    def run(self, deployment: str, **parameters: Any) -> Any:
        """Trigger a run as the UI's Run button does, wait for its final state, return it."""
        return self.wait(self.local.trigger(deployment, **parameters))

    def wait(self, flow_run_id: UUID) -> Any:
        return wait_for_final_state(self.api_url, flow_run_id, RUN_TIMEOUT)

    def settle(self) -> None:
        """Let any run the schedules started (or left due) finish, so none overlaps a test's."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

        of_stack = FlowRunFilterDeploymentId(any_=list(self.local.deployments.values()))
        with self.client() as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=of_stack))
        for run in runs:
            if run.state is not None and not run.state.is_final():
                self.wait(run.id)

    def task_runs(self, flow_run_id: UUID, timeout: float = 30) -> list[Any]:
        """The run's task runs, once every one is in a final state (they arrive as events)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                runs = list(
                    client.read_task_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                    )
                )
                if all(r.state is not None and r.state.is_final() for r in runs):
                    return runs
                if time.monotonic() > deadline:
                    return runs
                time.sleep(0.3)

    def logs(self, flow_run_id: UUID, quiet_seconds: float = 3, timeout: float = 60) -> list[str]:
        """The run's log messages (its task runs' too), once no new one came for a while."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        deadline = time.monotonic() + timeout
        seen: list[str] = []
        quiet_since = time.monotonic()
        with self.client() as client:
            while time.monotonic() < deadline:
                logs = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
                )
                messages = [log.message for log in logs]
                if messages != seen:
                    seen, quiet_since = messages, time.monotonic()
                elif seen and time.monotonic() - quiet_since >= quiet_seconds:
                    break
                time.sleep(0.5)
        return seen

    def artifacts(self, flow_run_id: UUID) -> dict[str, Any]:
        """The run's artifacts by key."""
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        with self.client() as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
        return {a.key: a for a in found if a.key}

    def events(self, name: str, resource_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Events the server recorded with this name and resource, waiting for them to land."""
        body = {
            "filter": {
                "event": {"name": [name]},
                "resource": {"id": [resource_id]},
                "occurred": {"since": "2000-01-01T00:00:00Z"},
            },
            "limit": 50,
        }
        deadline = time.monotonic() + timeout
        while True:
            found = httpx.post(f"{self.api_url}/events/filter", json=body, timeout=10).json()
            if found["events"] or time.monotonic() > deadline:
                return list(found["events"])
            time.sleep(0.5)
