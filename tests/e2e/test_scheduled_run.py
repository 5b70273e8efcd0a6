"""A schedule really runs the sync: the server creates the run, the worker completes it, unbidden."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.client.schemas.schedules import IntervalSchedule

from devstack.demo import expected_quantities
from devstack.local_stack import EVERY_15_MINUTES

pytest_plugins = ["prefect_server"]
pytestmark = pytest.mark.slow

FIRST_RUN_IN = timedelta(seconds=12)  # the test server's scheduler looks every 2 s
INTERVAL = timedelta(minutes=1)  # the second run would start long after the test is over


def test_a_one_minute_schedule_runs_the_sync_with_nobody_triggering_it(server_stack):
    stack = server_stack
    stack.reset_sandbox()
    deployment_id = stack.local.deployments[EVERY_15_MINUTES]
    anchor = (datetime.now(UTC) + FIRST_RUN_IN).replace(microsecond=0)
    of_deployment = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
    with stack.client() as client:
        known = {r.id for r in client.read_flow_runs(flow_run_filter=of_deployment)}

        def new_runs() -> list:
            runs = client.read_flow_runs(flow_run_filter=of_deployment)
            return sorted(
                (r for r in runs if r.id not in known), key=lambda r: r.expected_start_time
            )

        [schedule] = client.create_deployment_schedules(
            deployment_id, [(IntervalSchedule(interval=INTERVAL, anchor_date=anchor), True)]
        )
        try:
            deadline = time.monotonic() + 60
            while not (created := new_runs()):
                assert time.monotonic() < deadline, "the scheduler created no run"
                time.sleep(1)
            run = stack.wait(created[0].id)
        finally:
            client.delete_deployment_schedule(deployment_id, schedule.id)
            for leftover in new_runs():
                if leftover.state.type.value == "SCHEDULED":
                    client.delete_flow_run(leftover.id)
        others = [r for r in new_runs() if r.id != run.id]

    assert run.auto_scheduled and "auto-scheduled" in run.tags
    assert run.expected_start_time == anchor
    assert run.state.type.value == "COMPLETED", run.state.message
    assert stack.local.sandbox.quantities() == expected_quantities(stack.local.catalog)
    assert others == []  # no other run started
