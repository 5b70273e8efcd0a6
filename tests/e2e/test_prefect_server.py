"""The deployments on a real Prefect server, run by a real worker, triggered as the UI does it."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.exceptions import PrefectHTTPStatusError

from devstack.demo import expected_quantities
from devstack.local_stack import EVERY_15_MINUTES, NIGHTLY_FULL, PROJECT_ROOT, WORK_POOL
from flows.server.setup import (
    AUTH_FAILED,
    CRASH_REPORT,
    FAILED,
    FEED_STALE,
    HEARTBEAT_LOST,
    NO_SUCCESS,
    RUN_LATE,
    SetupOptions,
    set_up_automations,
)
from sandbox.server import Fault

pytest_plugins = ["prefect_server"]
pytestmark = pytest.mark.slow

ARRIVAL_TRIGGER = "a feed arrived"  # the trigger of on-feed-arrival in deployments/prefect.yaml
CHUNK_NAME = re.compile(r"^chunk (\d+)/(\d+) (.+)…(.+) \((\d+) products\)$")


def test_prefect_yaml_registers_both_deployments_as_documented(server_stack):
    every, nightly = (server_stack.as_deployed[n] for n in (EVERY_15_MINUTES, NIGHTLY_FULL))
    config = str(server_stack.local.config)
    assert every.parameters == {"config_path": config}
    assert nightly.parameters == {"config_path": config, "full": True}
    schedules = [
        [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules]
        for d in (every, nightly)
    ]
    assert schedules == [
        [("*/15 * * * *", "Europe/Amsterdam", True)],
        [("5 2 * * *", "Europe/Amsterdam", True)],
    ]
    for deployment in (every, nightly):
        assert deployment.entrypoint == "flows/sync.py:inventory_sync"
        assert deployment.work_pool_name == WORK_POOL
        assert deployment.global_concurrency_limit.limit == 1
        assert {"inventory-sync", "lightspeed", "scheduled"} <= set(deployment.tags)
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_ROOT)}}
        ]
        assert deployment.enforce_parameter_schema
        assert deployment.job_variables == {
            # the deploying interpreter starts each run: GX's side process, then Prefect's engine
            "command": f"{sys.executable} -m flows.flow_run_process",
            "env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "60"},
        }
    assert "full" in nightly.tags
    schema = every.parameter_openapi_schema["properties"]
    assert {"config_path", "dry_run", "warehouses", "chunk_size"} <= set(schema)
    assert all(schema[name].get("description") for name in schema), "every parameter described"
    assert schema["dry_run"]["type"] == "boolean"
    with server_stack.client() as client:
        pool = client.read_work_pool(WORK_POOL)
    assert (pool.type, pool.concurrency_limit) == ("process", 1)


def test_the_server_rejects_a_bad_parameter_before_any_run(server_stack):
    with server_stack.client() as client, pytest.raises(PrefectHTTPStatusError) as refused:
        client.create_flow_run_from_deployment(
            server_stack.local.deployments[EVERY_15_MINUTES], parameters={"chunk_size": 0}
        )
    assert refused.value.response.status_code == 409
    assert "chunk_size" in refused.value.response.text


def test_a_run_started_like_the_run_button_syncs_and_shows_its_retry(server_stack):
    stack = server_stack
    stack.reset_sandbox()
    catalog = stack.local.catalog
    tee = next(p["id"] for p in catalog if p["vendorSku"] == "TEE-BLUE-M")
    stack.local.sandbox.add_fault(Fault(status=503, if_contains_id=tee, times=1))

    run = stack.run(NIGHTLY_FULL)  # a Quick run: the deployment's own parameters

    assert run.state.type.value == "COMPLETED", run.state.message
    assert run.deployment_id == stack.local.deployments[NIGHTLY_FULL]
    assert stack.local.sandbox.quantities() == expected_quantities(catalog)
    tries = [r for r in stack.local.sandbox.requests() if tee in r.product_ids]
    assert [r.status for r in tries] == [503, 200]

    chunks = {_chunk(t.name): t for t in stack.task_runs(run.id) if CHUNK_NAME.match(t.name)}
    assert sorted((number, total) for number, total, _ in chunks) == [(1, 3), (2, 3), (3, 3)]
    assert sum(size for _, _, size in chunks) == 23
    assert all(t.state.type.value == "COMPLETED" for t in chunks.values())
    attempts = sorted((t.run_count, size) for (_, _, size), t in chunks.items())
    retried_size = len(tries[0].product_ids)  # the chunk that met the 503
    assert [runs for runs, _ in attempts] == [1, 1, 2] and attempts[-1][1] == retried_size

    artifacts = stack.artifacts(run.id)
    assert {"sync-summary", "quarantine", "load-progress"} <= set(artifacts)
    assert "Result: OK" in artifacts["sync-summary"].data
    assert artifacts["load-progress"].data == 100
    assert {row["reason"] for row in _table(artifacts["quarantine"].data)} >= {
        "empty SKU",
        "unknown SKU",
        "negative quantity",
        "quantity is not an integer",
    }

    events = stack.events("inventory-sync.run.succeeded", f"inventory-sync.run.{run.id}")
    assert len(events) == 1
    payload = events[0]["payload"]
    assert (payload["products_sent"], payload["chunks_failed"], payload["attempts"]) == (23, 0, 4)
    assert payload["rows_flagged"] == 4


def _chunk(name: str) -> tuple[int, int, int]:
    """(number, of how many, products) from a chunk task run's name."""
    match = CHUNK_NAME.match(name)
    assert match, name
    return int(match[1]), int(match[2]), int(match[5])


def _table(data: object) -> list[dict]:
    return json.loads(data) if isinstance(data, str) else list(data)  # type: ignore[arg-type]


def test_a_failed_deployment_run_logs_its_message_once_and_no_traceback(server_stack, tmp_path):
    """The engine of a deployment run re-raises the flow's error; the UI shows it once."""
    missing = str(tmp_path / "missing.toml")
    run = server_stack.run(EVERY_15_MINUTES, config_path=missing)
    assert run.state.type.value == "FAILED"
    logs = server_stack.logs(run.id)
    assert not [m for m in logs if "Traceback" in m], "\n".join(logs)
    told = [m for m in logs if "configuration file not found" in m]
    assert [m for m in told if not m.startswith("Finished in state")] == [
        f"Encountered exception during execution: {missing}: configuration file not found"
    ]


def test_the_failure_alert_notifies_through_the_block_given_to_deploy(server_stack, tmp_path):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    received: list[dict] = []

    class Webhook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    recording = SetupOptions(config_path=server_stack.local.config)
    with ThreadingHTTPServer(("127.0.0.1", 0), Webhook) as hook:
        threading.Thread(target=hook.serve_forever, daemon=True).start()
        with temporary_settings({PREFECT_API_URL: server_stack.api_url}):
            CustomWebhookNotificationBlock(
                name="sync alerts",
                url=f"http://127.0.0.1:{hook.server_address[1]}/",
                json_data={"subject": "{{subject}}", "body": "{{body}}"},
            ).save("sync-alerts", overwrite=True)
        # what `inventory-sync deploy --notify sync-alerts` does to the automations
        notifying = replace(recording, notify="sync-alerts")
        report = set_up_automations(server_stack.api_url, notifying)
        try:
            assert f"automation {FAILED!r}: updated" in report.lines
            missing = str(tmp_path / "missing.toml")
            run = server_stack.run(EVERY_15_MINUTES, config_path=missing)
            deadline = time.monotonic() + 60
            while not received and time.monotonic() < deadline:
                time.sleep(0.25)
        finally:
            set_up_automations(server_stack.api_url, recording)  # back to recording only
            hook.shutdown()

    assert run.state.type.value == "FAILED"
    assert [m["subject"] for m in received] == [f"inventory-sync run {run.name} failed"]
    body = received[0]["body"]
    assert "configuration file not found" in body and missing in body
    assert body.rstrip().endswith(f"/runs/flow-run/{run.id}")


def test_deploy_without_notify_records_alerts_and_sizes_the_heartbeat_window(server_stack):
    with server_stack.client() as client:
        automations = {a.name: a for a in client.read_automations()}
    actions = {
        name: [a.type for a in automation.actions] for name, automation in automations.items()
    }
    assert actions == {
        FAILED: ["do-nothing"],
        HEARTBEAT_LOST: ["change-flow-run-state"],
        CRASH_REPORT: ["call-webhook"],
        NO_SUCCESS: ["do-nothing"],
        RUN_LATE: ["do-nothing"],
        FEED_STALE: ["do-nothing"],
        AUTH_FAILED: ["do-nothing"],
        ARRIVAL_TRIGGER: ["run-deployment"],  # on-feed-arrival's own trigger (issue 12)
    }
    windows = {name: a.trigger.within.total_seconds() for name, a in automations.items()}
    assert (windows[HEARTBEAT_LOST], windows[NO_SUCCESS], windows[RUN_LATE]) == (180, 2700, 600)
