"""Unattended on a real Prefect server: lost workers, silence and server restarts are handled."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import psutil
import pytest
from stack import ServerStack

from devstack.demo import DEMO_TOKEN, expected_quantities, product_id
from devstack.local_stack import EVERY_15_MINUTES, WORK_POOL, LocalStack
from devstack.processes import ManagedProcess, descendants, free_port, is_running, port_in_use
from flows.server.setup import (
    FAILED,
    FEED_STALE,
    NO_SUCCESS,
    PREFECT_FILE,
    RUN_LATE,
    SetupOptions,
    set_up_automations,
)
from sandbox.server import Fault
from tasks.state.store import StateStore

pytestmark = pytest.mark.slow

HEARTBEAT = 30  # seconds, Prefect's minimum: a lost run is found after 3 missed, 90 s
MISSED = 3
NO_SUCCESS_AFTER = timedelta(seconds=30)  # short windows, so the alerts are seen in a test
LATE_AFTER = timedelta(seconds=20)
HANG = product_id("MUG-WHITE")  # the chunk holding this product never gets an answer


def _test_prefect_file(folder: Any) -> Any:
    """deployments/prefect.yaml with 30 s heartbeats and its schedules off (no unbidden runs)."""
    text = PREFECT_FILE.read_text(encoding="utf-8")
    fast = text.replace(
        'PREFECT_FLOWS_HEARTBEAT_FREQUENCY: "60"',
        f'PREFECT_FLOWS_HEARTBEAT_FREQUENCY: "{HEARTBEAT}"',
    ).replace("active: true", "active: false")
    assert fast.count(f'"{HEARTBEAT}"') == 1 and "active: true" not in fast
    path = folder / "prefect.yaml"
    path.write_text(fast, encoding="utf-8")
    return path


def _setup(prefect_file: Any) -> dict[str, Any]:
    return {
        "prefect_file": prefect_file,
        "missed_heartbeats": MISSED,
        "no_success_after": NO_SUCCESS_AFTER,
        "late_after": LATE_AFTER,
    }


@pytest.fixture(scope="module")
def unattended(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerStack]:
    """A stack of its own (this module kills and restarts its processes), set up by deploy."""
    root = tmp_path_factory.mktemp("unattended")
    local = LocalStack(
        home=root / "prefect",
        folder=root / "demo",
        port=free_port(),
        sandbox_port=0,
        worker_poll_seconds=1,
        say=lambda line: None,
        setup=_setup(_test_prefect_file(root)),
    )
    with local:
        yield ServerStack(local)
    assert not port_in_use(local.port), "the Prefect server's port is free again"


# the server's event feed


def _events(api_url: str, name: str, resource: str, since: datetime) -> list[dict[str, Any]]:
    """Events with this name and resource id (a trailing * matches a prefix), oldest first."""
    spec: dict[str, Any] = (
        {"id_prefix": [resource[:-1]]} if resource.endswith("*") else {"id": [resource]}
    )
    body = {
        "filter": {
            "event": {"name": [name]},
            "resource": spec,
            "occurred": {"since": since.isoformat()},
            "order": "ASC",
        },
        "limit": 50,  # the most the API returns at once; plenty here
    }
    response = httpx.post(f"{api_url}/events/filter", json=body, timeout=10)
    assert response.status_code == 200, response.text
    found = response.json()["events"]
    return sorted(found, key=lambda e: e["occurred"])


def _occurred(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["occurred"])


def _firings(api_url: str, automation_id: UUID, since: datetime) -> list[datetime]:
    """When an automation fired, from its `prefect.automation.triggered` events."""
    events = _events(
        api_url, "prefect.automation.triggered", f"prefect.automation.{automation_id}", since
    )
    return [_occurred(e) for e in events]


def _poll(what: str, check: Any, timeout: float, every: float = 1.0) -> Any:
    """Call check() until it returns something truthy; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)
    return result


def _state(stack: ServerStack, flow_run_id: UUID) -> Any:
    with stack.client() as client:
        return client.read_flow_run(flow_run_id).state


# processes


def _kill_worker_and_its_runs(worker: ManagedProcess) -> set[psutil.Process]:
    """SIGKILL the worker's process group and every flow run's, as a lost machine would."""
    assert worker.pid is not None
    family = descendants(worker.pid)
    groups = {worker.pid}
    for member in family:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(member.pid))
    assert os.getpgrp() not in groups
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    return family


def _accepted_puts(stack: ServerStack) -> int:
    return sum(r.method == "PUT" and r.status == 200 for r in stack.local.sandbox.requests())


def _landed(stack: ServerStack) -> set[str]:
    """Ids the sandbox accepted in a PUT since its last reset."""
    return {
        i for r in stack.local.sandbox.requests() if r.method == "PUT" and r.status == 200
        for i in r.product_ids
    }  # fmt: skip


def _assert_state_store_exact(stack: ServerStack) -> dict[str, int]:
    """The state claims nothing the sandbox does not hold; returns what it recorded."""
    recorded = dict(StateStore(stack.local.folder / "state").last_pushed().iter_rows())
    held = stack.local.sandbox.quantities()
    assert {pid: held[pid] for pid in recorded} == recorded
    return recorded


def test_a_lost_worker_is_crashed_reported_and_the_next_run_finishes_the_job(unattended):
    stack = unattended
    stack.reset_sandbox()
    expected = expected_quantities(stack.local.catalog)
    stack.local.sandbox.add_fault(Fault(delay=600, status=503, if_contains_id=HANG))
    began = datetime.now(UTC)
    lost = stack.local.trigger(EVERY_15_MINUTES)
    # three chunks go out at once; two land, the third hangs: the kill comes mid-load
    _poll("two chunks landed", lambda: _accepted_puts(stack) >= 2, timeout=240, every=0.2)
    assert stack.local.worker is not None
    family = _kill_worker_and_its_runs(stack.local.worker)
    killed = datetime.now(UTC)
    _poll("the killed processes are gone", lambda: not any(is_running(p) for p in family), 10, 0.1)
    landed_before = _landed(stack)
    assert len(landed_before) > 0 and HANG not in landed_before

    following = stack.local.trigger(EVERY_15_MINUTES)  # due now; waits while the slot is held
    stack.local.start_worker("replacement-worker")  # a supervisor restarting the worker

    crashed = _poll(
        "the lost run is Crashed",
        lambda: (s := _state(stack, lost)).type.value == "CRASHED" and s,
        timeout=MISSED * HEARTBEAT + 60,
    )
    heartbeats = _events(
        stack.api_url, "prefect.flow-run.heartbeat", f"prefect.flow-run.{lost}", began
    )
    last_heartbeat = _occurred(heartbeats[-1])
    assert last_heartbeat <= killed
    from_kill = (crashed.timestamp - killed).total_seconds()
    from_heartbeat = (crashed.timestamp - last_heartbeat).total_seconds()
    print(f"\nkill → Crashed {from_kill:.1f} s; last heartbeat → Crashed {from_heartbeat:.1f} s")
    assert MISSED * HEARTBEAT <= from_heartbeat <= MISSED * HEARTBEAT + 20  # 3 missed, no sooner
    assert from_kill <= MISSED * HEARTBEAT + 20
    assert "inventory-sync heartbeat lost" in (crashed.message or "")

    reports = _poll(
        "a failure event for the crash",
        lambda: _events(
            stack.api_url, "inventory-sync.run.failed", f"inventory-sync.run.{lost}", began
        ),
        timeout=60,
    )
    [report] = reports
    assert report["payload"]["reason"] == "crashed"
    assert report["resource"]["inventory-sync.reason"] == "crashed"
    assert {r["prefect.resource.id"] for r in report["related"]} >= {f"prefect.flow-run.{lost}"}
    failed_alert = stack.local.setup_report.automations[FAILED]
    _poll("the failure alert fired", lambda: _firings(stack.api_url, failed_alert, began), 60)

    final = stack.wait(following)
    assert final.state.type.value == "COMPLETED", final.state.message
    after_crash = (final.state.timestamp - crashed.timestamp).total_seconds()
    with stack.client() as client:
        history = client.read_flow_run_states(following)
    steps = ", ".join(
        f"{s.name} {(s.timestamp - crashed.timestamp).total_seconds():+.1f}" for s in history
    )
    print(
        f"Crashed → next run Completed {after_crash:.1f} s (its states, s after the crash: {steps})"
    )
    assert after_crash <= 60
    assert stack.local.sandbox.quantities() == expected
    recorded = _assert_state_store_exact(stack)
    assert set(recorded) == _landed(stack) and HANG in recorded
    assert not any(is_running(p) for p in family)


def test_a_prefect_server_restart_mid_load_loses_nothing(unattended):
    stack = unattended
    stack.reset_sandbox()
    expected = expected_quantities(stack.local.catalog)
    slow = 3.0
    stack.local.sandbox.add_fault(Fault(delay=slow, times=2))  # two chunks land while it is down
    run_id = stack.local.trigger(EVERY_15_MINUTES)
    _poll("the load started", lambda: _accepted_puts(stack) >= 1, timeout=240, every=0.2)
    down = time.monotonic()
    stack.local.restart_server()
    up = time.monotonic()
    print(f"\nPrefect server down and back in {up - down:.1f} s")
    _poll("the slow chunks were answered", lambda: _accepted_puts(stack) >= 3, timeout=60)
    answered = [r.at + slow for r in stack.local.sandbox.requests() if r.method == "PUT"]
    assert any(down < at < up for at in answered), "a chunk landed while the server was down"

    ended = stack.wait(run_id)
    print(f"the run during the restart ended {ended.state.name}: {ended.state.message}")
    assert ended.state.type.value in ("COMPLETED", "FAILED", "CRASHED")
    _assert_state_store_exact(stack)
    assert stack.local.worker is not None and stack.local.worker.exit_code() is None

    following = stack.run(EVERY_15_MINUTES)
    assert following.state.type.value == "COMPLETED", following.state.message
    assert stack.local.sandbox.quantities() == expected
    recorded = _assert_state_store_exact(stack)
    assert set(recorded) == _landed(stack)


def _sync_from_the_cli(stack: ServerStack, log: Any) -> None:
    """One `inventory-sync run` against the stack's server and sandbox, as a user runs it."""
    env = {
        **os.environ,
        "PREFECT_API_URL": stack.api_url,
        "LIGHTSPEED_TOKEN": DEMO_TOKEN,
        **stack.local.sync_env,  # the sandbox's URLs, south database, OAuth secret and key
    }
    command = [sys.executable, "-m", "flows.cli", "run", "--config", str(stack.local.config)]
    with log.open("ab") as out:
        subprocess.run(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=True
        )


def _success_times(stack: ServerStack, since: datetime, count: int) -> list[datetime]:
    """When the last `count` successful runs' events occurred, once all have reached the server."""

    def arrived() -> list[datetime]:
        found = _events(
            stack.api_url, "inventory-sync.run.succeeded", "inventory-sync.run.*", since
        )
        return [_occurred(e) for e in found] if len(found) == count else []

    return list(_poll("every success event reached the server", arrived, timeout=30))


def test_the_no_success_alert_fires_when_syncs_stop_and_not_while_they_succeed(
    unattended, tmp_path
):
    stack = unattended
    stack.reset_sandbox()
    alert = stack.local.setup_report.automations[NO_SUCCESS]
    log = tmp_path / "cli.log"
    began = time.monotonic()
    _sync_from_the_cli(stack, log)
    # the window must outlast the gap between two syncs, which a loaded machine stretches
    window = max(NO_SUCCESS_AFTER.total_seconds(), 3 * (time.monotonic() - began))
    fixture = SetupOptions(
        config_path=stack.local.config, timezone=stack.local.timezone, **stack.local.setup
    )
    set_up_automations(stack.api_url, replace(fixture, no_success_after=timedelta(seconds=window)))
    try:
        since = datetime.now(UTC)
        runs = 0
        until = time.monotonic() + 1.25 * window  # syncs succeed for longer than the window
        while (now := time.monotonic()) < until:
            _sync_from_the_cli(stack, log)
            runs += 1
            time.sleep(max(0.0, now + window / 4 - time.monotonic()))  # not needlessly often
        times = _success_times(stack, since, runs)
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert max(gaps) < window, f"syncs {max(gaps):.0f} s apart: the machine is too slow"
        first, last = times[0], times[-1]

        fired = _poll(
            "the alert fires once syncs stop",
            lambda: [f for f in _firings(stack.api_url, alert, since) if f > last],
            timeout=window + 30,
        )
        # a window that had run out before the first success may fire as that success arrives
        settled = first + timedelta(seconds=10)
        quiet = [f for f in _firings(stack.api_url, alert, since) if settled < f <= last]
    finally:
        set_up_automations(stack.api_url, fixture)
    silence = (fired[0] - last).total_seconds()
    print(
        f"\n{runs} syncs over {(last - first).total_seconds():.0f} s, none more than "
        f"{max(gaps):.0f} s apart; window {window:.0f} s; alert {silence:.1f} s after the last"
    )
    assert quiet == []
    assert window <= silence <= window + 15


def test_deploy_twice_leaves_one_of_each_and_removes_a_duplicate(unattended):
    from prefect.events.schemas.automations import AutomationCore

    stack = unattended
    with stack.client() as client:
        [original] = client.read_automations_by_name(FEED_STALE)
        # what `prefect automation create --from-file` run twice by hand leaves
        client.create_automation(AutomationCore.model_validate(original.model_dump()))
    command = [
        sys.executable, "-m", "flows.cli", "deploy",
        "--config", str(stack.local.config),
        "--prefect-file", str(stack.local.setup["prefect_file"]),
        "--missed-heartbeats", str(MISSED),
        "--no-success-after", f"{NO_SUCCESS_AFTER.total_seconds():.0f}s",
        "--late-after", f"{LATE_AFTER.total_seconds():.0f}s",
    ]  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": stack.api_url}
    wrong = subprocess.run(
        [*command, "--notify", "nowhere"], env=env, capture_output=True, text=True, timeout=300
    )
    assert wrong.returncode == 1 and "no block named 'nowhere'" in wrong.stderr
    assert "': " not in wrong.stdout, "refused before changing anything"
    first, second = (
        subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd="/")
        for _ in range(2)
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"automation {FEED_STALE!r}: unchanged; 1 duplicate(s) deleted" in first.stdout
    changes = [line.strip() for line in second.stdout.splitlines() if "': " in line]
    assert len(changes) == 1 + 3 + 1 + 7  # pool, deployments, webhook block, automations
    assert all(
        line.endswith(": unchanged") for line in changes if not line.startswith("deployment ")
    ), second.stdout
    assert "alerts are recorded only" in second.stdout

    with stack.client() as client:
        automations = [a.name for a in client.read_automations()]
        deployments = [d.name for d in client.read_deployments()]
        pools = [p.name for p in client.read_work_pools()]
    # and the trigger of on-feed-arrival, which `prefect deploy` replaces on each deploy
    assert sorted(automations) == sorted([*stack.local.setup_report.automations, "a feed arrived"])
    assert sorted(deployments) == ["every-15-minutes", "nightly-full", "on-feed-arrival"]
    assert pools.count("inventory-sync") == 1


def test_a_run_late_for_longer_than_the_window_raises_the_late_alert(unattended):
    from prefect.client.schemas.actions import WorkPoolUpdate

    stack = unattended
    alert = stack.local.setup_report.automations[RUN_LATE]
    began = datetime.now(UTC)
    with stack.client() as client:
        client.update_work_pool(WORK_POOL, WorkPoolUpdate(is_paused=True))  # as if no worker
        try:
            run_id = stack.local.trigger(EVERY_15_MINUTES)
            late = _poll(
                "the run is marked Late",
                lambda: (s := _state(stack, run_id)).name == "Late" and s,
                timeout=90,
            )
            fired = _poll(
                "the late alert fires",
                lambda: _firings(stack.api_url, alert, began),
                timeout=LATE_AFTER.total_seconds() + 30,
            )
        finally:
            client.delete_flow_run(run_id)
            client.update_work_pool(WORK_POOL, WorkPoolUpdate(is_paused=False))
    waited = (fired[0] - late.timestamp).total_seconds()
    print(f"\nLate → alert {waited:.1f} s (window {LATE_AFTER.total_seconds():.0f} s)")
    assert LATE_AFTER.total_seconds() <= waited <= LATE_AFTER.total_seconds() + 15
