"""A feed lands, a run follows: `make run`'s stack with its watcher, a real server and worker.

The stack is its own (not the shared `server_stack`): these tests write feeds into its demo
folder, which the other server tests expect untouched.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.demo import expected_quantities, product_id
from devstack.local_stack import (
    DEMO_CONFIG,
    DEPLOYMENTS,
    NIGHTLY_FULL,
    ON_FEED_ARRIVAL,
    LocalStack,
    prefect_client,
    wait_for_final_state,
)
from devstack.processes import descendants, free_port, is_running, port_in_use

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SETTLE, DEBOUNCE = 1.5, 3.0
RUN_TIMEOUT = 240
QUIET = SETTLE + DEBOUNCE + 10  # longer than any arrival takes to become an event, and a run
TEE = product_id("TEE-RED-M")  # in east's feed with 10 units, 8 after its safety stock


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The local stack with a quick watcher, schedules paused, after one full sync."""
    root = tmp_path_factory.mktemp("arrivals")
    folder = root / "demo"
    folder.mkdir()
    (folder / "inventory-sync.toml").write_text(
        DEMO_CONFIG.read_text(encoding="utf-8")
        + f'\n[watch]\nsettle = "{SETTLE}s"\ndebounce = "{DEBOUNCE}s"\n',
        encoding="utf-8",
    )
    local = LocalStack(
        home=root / "prefect",
        folder=folder,
        port=free_port(),
        sandbox_port=0,
        worker_poll_seconds=1,
        say=lambda line: None,
        server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"},
    )
    with local:
        with prefect_client(local.api_url) as client:
            for name in DEPLOYMENTS:
                for schedule in client.read_deployment(local.deployments[name]).schedules:
                    client.update_deployment_schedule(
                        local.deployments[name], schedule.id, active=False
                    )
        full = wait_for_final_state(local.api_url, local.trigger(NIGHTLY_FULL), RUN_TIMEOUT)
        assert full.state.type.value == "COMPLETED", full.state.message
        yield local


def arrival_runs(stack: LocalStack) -> list[Any]:
    """Every run of the on-feed-arrival deployment, oldest first."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with prefect_client(stack.api_url) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[stack.deployments[ON_FEED_ARRIVAL]])
            )
        )
    return sorted(runs, key=lambda r: r.created)


def new_runs_once_quiet(stack: LocalStack, before: int, at_least: int) -> list[Any]:
    """Runs after the first `before`: once `at_least` exist, all ended, and QUIET s bring none."""
    deadline = time.monotonic() + RUN_TIMEOUT * 2
    quiet_since, seen = time.monotonic(), -1
    while time.monotonic() < deadline:
        runs = arrival_runs(stack)[before:]
        if len(runs) != seen:
            quiet_since, seen = time.monotonic(), len(runs)
        settled = len(runs) >= at_least and all(r.state and r.state.is_final() for r in runs)
        if settled and time.monotonic() - quiet_since > QUIET:
            return runs
        time.sleep(0.5)
    raise AssertionError(f"runs did not settle: {[(r.name, r.state.name) for r in runs]}")


def east_feed(stack: LocalStack, extra: int) -> bytes:
    """East's demo feed with one more bin of TEE-RED-M: that product then has `extra` more."""
    original = stack.folder / "feeds" / "east-20261126.csv"  # sku,bin,qty with CRLF
    return original.read_bytes() + f"TEE-RED-M,B9,{extra}\r\n".encode()


def drop(stack: LocalStack, name: str, data: bytes) -> Path:
    """Write a feed as exporters should: to a temporary name, then renamed into place."""
    target = stack.folder / "feeds" / name
    scratch = target.with_name(f".{name}.part")
    scratch.write_bytes(data)
    scratch.rename(target)
    return target


def expected_tee(stack: LocalStack, extra: int) -> int:
    return expected_quantities(stack.catalog)[TEE] + extra


def arrival_events(stack: LocalStack, since: datetime) -> list[dict[str, Any]]:
    body = {
        "filter": {
            "event": {"name": ["inventory-sync.feed.arrived"]},
            "occurred": {"since": since.isoformat()},
        },
        "limit": 50,
    }
    events = httpx.post(f"{stack.api_url}/events/filter", json=body, timeout=10).json()["events"]
    return sorted(events, key=lambda e: e["occurred"])


def test_a_new_feed_file_leads_to_a_run_that_updates_the_sandbox(stack):
    before = len(arrival_runs(stack))
    drop(stack, "east-20261127.csv", east_feed(stack, 100))

    runs = new_runs_once_quiet(stack, before, at_least=1)

    assert [(r.state.type.value, r.parameters.get("warehouses")) for r in runs] == [
        ("COMPLETED", ["east"])
    ]
    assert stack.sandbox.quantities()[TEE] == expected_tee(stack, 100)


def test_five_files_within_the_window_make_one_run(stack):
    before = len(arrival_runs(stack))
    feeds = stack.folder / "feeds"
    west, north = (feeds / "west.csv").read_bytes(), (feeds / "north.parquet").read_bytes()
    for n in range(3):
        drop(stack, f"east-2026112{8 + n}.csv", east_feed(stack, 200 + n))
    drop(stack, "west.csv", west)
    drop(stack, "north.parquet", north)

    runs = new_runs_once_quiet(stack, before, at_least=1)

    assert [(r.state.type.value, r.parameters.get("warehouses")) for r in runs] == [
        ("COMPLETED", ["east", "north", "west"])
    ]
    assert stack.sandbox.quantities()[TEE] == expected_tee(stack, 202), "the newest east file"


def test_five_files_during_a_run_make_exactly_one_follow_up(stack):
    before = len(arrival_runs(stack))
    feeds = stack.folder / "feeds"
    west, north = (feeds / "west.csv").read_bytes(), (feeds / "north.parquet").read_bytes()
    drop(stack, "east-20261201.csv", east_feed(stack, 300))
    deadline = time.monotonic() + RUN_TIMEOUT
    while not [r for r in arrival_runs(stack)[before:] if r.state.type.value == "RUNNING"]:
        assert time.monotonic() < deadline, "the first run never started"
        time.sleep(0.2)

    for n in range(3):
        drop(stack, f"east-2026120{2 + n}.csv", east_feed(stack, 310 + n))
    drop(stack, "west.csv", west)
    drop(stack, "north.parquet", north)

    runs = new_runs_once_quiet(stack, before, at_least=2)

    assert [(r.state.type.value, r.parameters.get("warehouses")) for r in runs] == [
        ("COMPLETED", ["east"]),
        ("COMPLETED", ["east", "north", "west"]),
    ]
    first_end = runs[0].end_time
    assert runs[1].start_time >= first_end, "the follow-up never overlapped the first run"
    assert stack.sandbox.quantities()[TEE] == expected_tee(stack, 312)


def test_a_half_written_file_is_picked_up_once_complete(stack):
    before = len(arrival_runs(stack))
    since = datetime.now(UTC)
    whole = east_feed(stack, 400)
    half = whole.rindex(b"\n", 0, len(whole) // 2) + 1
    target = stack.folder / "feeds" / "east-20261210.csv"
    with target.open("wb") as export:  # written in place, in two steps, as a slow exporter does
        export.write(whole[:half])
        export.flush()
        time.sleep(SETTLE / 2)
        export.write(whole[half:])

    runs = new_runs_once_quiet(stack, before, at_least=1)

    assert [(r.state.type.value, r.parameters.get("warehouses")) for r in runs] == [
        ("COMPLETED", ["east"])
    ]
    events = arrival_events(stack, since)
    assert len(events) == 1
    (east,) = events[0]["related"]
    assert east["inventory-sync.fingerprint"].startswith(f"{len(whole)}:"), "the complete file"
    assert stack.sandbox.quantities()[TEE] == expected_tee(stack, 400)


def test_a_killed_watcher_restarted_still_sends_what_arrived_while_it_was_down(stack):
    assert stack.watcher is not None
    before = len(arrival_runs(stack))
    os.kill(stack.watcher.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack.watcher.exit_code() is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert stack.watcher.exit_code() == -signal.SIGKILL

    drop(stack, "east-20261211.csv", east_feed(stack, 500))  # nobody is watching
    time.sleep(SETTLE + DEBOUNCE)
    assert len(arrival_runs(stack)) == before
    stack.start_watcher()

    runs = new_runs_once_quiet(stack, before, at_least=1)

    assert [(r.state.type.value, r.parameters.get("warehouses")) for r in runs] == [
        ("COMPLETED", ["east"])
    ]
    assert stack.sandbox.quantities()[TEE] == expected_tee(stack, 500)
    assert "changed since the watcher last ran" in stack.watcher.log_tail(200)


def test_sigterm_stops_the_watcher_cleanly(stack):
    watcher = stack.watcher
    assert watcher is not None and watcher.pid is not None
    os.kill(watcher.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while watcher.exit_code() is None:
        assert time.monotonic() < deadline, "the watcher ignored SIGTERM"
        time.sleep(0.1)
    assert watcher.exit_code() == 0
    assert watcher.log_tail(3).rstrip().endswith("inventory-sync.watch: stopped")
    stack.start_watcher()


def test_stopping_the_stack_stops_the_watcher_and_leaves_no_process_or_port(stack):
    managed = [stack.server, stack.worker, stack.watcher]
    pids = {p.pid for p in managed if p is not None and p.pid is not None}
    family = {p for p in descendants(os.getpid()) if p.pid in pids}
    for member in list(family):
        family |= descendants(member.pid)
    assert len(pids) == 3 and len({p.pid for p in family} & pids) == 3

    stack.stop()

    assert [p for p in family if is_running(p)] == []
    assert not port_in_use(stack.port)
