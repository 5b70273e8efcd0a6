"""Send only what changed, lose nothing, refuse numbers that look wrong: against the sandbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from builders import csv_warehouse, pid, product, state_of

from flows.sync import inventory_sync
from sandbox.server import Fault
from tasks.guards import ChangesNotApproved, StaleFeeds

pytestmark = pytest.mark.usefixtures("prefect_api", "token_env")


def run(config: Path, **params):
    state = inventory_sync(config_path=str(config), return_state=True, **params)
    return state, state.result(raise_on_failure=False)


def puts(sandbox, since: int = 0) -> list:
    return [r for r in sandbox.requests()[since:] if r.method == "PUT"]


def sent_ids(sandbox, since: int = 0) -> set[str]:
    return {i for r in puts(sandbox, since) if r.status == 200 for i in r.product_ids}


def write_feed(path: Path, quantities: dict[str, object], mtime: float | None = None) -> None:
    path.write_text("sku,qty\n" + "".join(f"{s},{q}\n" for s, q in quantities.items()))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def six(tmp_path, sandbox, write_config):
    """Six tracked products, one CSV warehouse, chunks of two; returns the config path."""
    sandbox.reset(products=[product(f"S{i}") for i in range(6)])
    write_feed(tmp_path / "east.csv", {f"S{i}": 10 + i for i in range(6)})
    return write_config(csv_warehouse("east", "east.csv"), lightspeed="chunk_size = 2")


def test_second_identical_run_sends_nothing_and_full_sends_all(six, sandbox, tmp_path):
    state, first = run(six)
    assert state.is_completed() and first.products_sent == 6
    mark = len(sandbox.requests())
    state, second = run(six)
    assert state.is_completed()
    assert puts(sandbox, mark) == []
    assert (second.to_send, second.unchanged, second.chunks) == (0, 6, 0)
    write_feed(tmp_path / "east.csv", {f"S{i}": 10 + i for i in range(6)} | {"S4": 99})
    mark = len(sandbox.requests())
    state, third = run(six)
    assert sent_ids(sandbox, mark) == {pid("S4")}
    assert (third.to_send, third.unchanged) == (1, 5)
    mark = len(sandbox.requests())
    state, fourth = run(six, full=True)
    assert len(sent_ids(sandbox, mark)) == 6 and fourth.full


def test_state_records_only_what_the_api_accepted(six, sandbox, tmp_path):
    sandbox.add_fault(Fault(status=503, times=100, if_contains_id=pid("S2")))
    config_text = six.read_text().replace("chunk_size = 2", "chunk_size = 2\nretries = 0")
    six.write_text(config_text)
    state, _ = run(six)
    assert state.is_failed()
    pushed = dict(state_of(six).last_pushed().iter_rows())
    assert pushed == {pid(f"S{i}"): 10 + i for i in (0, 1, 4, 5)}
    sandbox.reset()
    mark = len(sandbox.requests())
    state, _ = run(six)
    assert state.is_completed()
    assert sent_ids(sandbox, mark) == {pid("S2"), pid("S3")}


def test_sigkill_mid_load_loses_nothing(tmp_path, sandbox, write_config, prefect_api):
    n = 40
    sandbox.reset(products=[product(f"S{i:02d}") for i in range(n)])
    write_feed(tmp_path / "east.csv", {f"S{i:02d}": 100 + i for i in range(n)})
    config = write_config(
        csv_warehouse("east", "east.csv"), lightspeed="chunk_size = 2\nmax_concurrency = 2"
    )
    sandbox.add_fault(Fault(delay=0.3, times=1000))  # a slow API, so the kill lands mid-load
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_API_URL": prefect_api, "LIGHTSPEED_TOKEN": "test-token"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len([r for r in puts(sandbox) if r.status == 200]) < 6:
        assert process.poll() is None and time.monotonic() < deadline, "the load never started"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    landed_before = sent_ids(sandbox)
    assert 0 < len(landed_before) < n  # killed in the middle
    store = state_of(config)
    recorded = dict(store.last_pushed().iter_rows())
    held = sandbox.quantities()
    assert all(held[i] == q for i, q in recorded.items())  # the state never claims too much
    assert set(recorded) <= landed_before
    assert recorded  # committed per chunk, not at the end of the run
    assert len(landed_before - set(recorded)) <= 2 * 2  # at most the chunks in flight

    sandbox.reset()  # no more latency; the request log starts afresh
    state, summary = run(config)
    assert state.is_completed(), summary
    expected = {pid(f"S{i:02d}"): 100 + i for i in range(n)}
    assert sandbox.quantities() == expected
    assert sent_ids(sandbox) == set(expected) - set(recorded)  # exactly what was not recorded
    assert dict(store.last_pushed().iter_rows()) == expected


def test_stale_feed_is_refused_before_anything_is_sent(
    tmp_path, sandbox, write_config, prefect_api
):
    sandbox.reset(products=[product("A")])
    write_feed(tmp_path / "east.csv", {"A": 5}, mtime=time.time() - 3 * 3600)
    config = write_config(csv_warehouse("east", "east.csv", max_age="2h"))
    state, result = run(config)
    assert state.is_failed() and isinstance(result, StaleFeeds)
    assert "warehouse 'east': stale:" in str(result) and "over max_age 2.0h" in str(result)
    assert puts(sandbox) == []

    flow_run = f"prefect.flow-run.{state.state_details.flow_run_id}"
    [stale] = events_of_run(prefect_api, "inventory-sync.feed.stale", flow_run)
    assert stale["resource"]["inventory-sync.warehouse"] == "east"  # an alert can name it
    assert stale["payload"]["warehouse"] == "east"
    assert "over max_age 2.0h" in stale["payload"]["reason"]
    assert stale["payload"]["action"].startswith("refused")
    [failed] = events_of_run(prefect_api, "inventory-sync.run.failed", flow_run)
    assert failed["payload"]["reason"] == failed["resource"]["inventory-sync.reason"] == "failed"


def events_of_run(api: str, name: str, flow_run: str, timeout: float = 30) -> list[dict]:
    """Events with this name related to this flow run, once they reach the server."""
    import httpx

    body = {"filter": {"event": {"name": [name]}, "related": {"id": [flow_run]}}, "limit": 50}
    deadline = time.monotonic() + timeout
    while True:
        found = httpx.post(f"{api}/events/filter", json=body, timeout=10).json()["events"]
        if found or time.monotonic() > deadline:
            return list(found)
        time.sleep(0.3)


def test_feed_older_than_the_last_good_one_is_refused_or_replaced(tmp_path, sandbox, write_config):
    sandbox.reset(products=[product("A"), product("B")])
    now = time.time()
    write_feed(tmp_path / "east.csv", {"A": 5, "B": 1}, mtime=now - 60)
    refuse = write_config(csv_warehouse("east", "east.csv"), name="refuse.toml")
    state, _ = run(refuse)
    assert state.is_completed()
    write_feed(tmp_path / "east.csv", {"A": 999, "B": 1}, mtime=now - 600)  # an older export
    state, result = run(refuse)
    assert isinstance(result, StaleFeeds)
    assert "older than the feed used by the last successful run" in str(result)
    assert sandbox.quantities()[pid("A")] == 5

    fallback = write_config(
        csv_warehouse("east", "east.csv", on_stale="use_last_good"), name="fallback.toml"
    )
    state, summary = run(fallback)
    assert state.is_completed(), summary
    assert sandbox.quantities()[pid("A")] == 5  # the last good feed, not the stale 999
    assert any("used its last good feed instead" in note for note in summary.notes)


def test_feed_age_can_come_from_a_timestamp_column(tmp_path, sandbox, write_config):
    sandbox.reset(products=[product("A")])
    (tmp_path / "east.csv").write_text("sku,qty,as_of\nA,5,2020-01-01T00:00:00Z\n")
    config = write_config(csv_warehouse("east", "east.csv", max_age="1d", timestamp_column="as_of"))
    state, result = run(config)
    assert isinstance(result, StaleFeeds) and "modified 2020-01-01T00:00:00+00:00" in str(result)


@pytest.fixture
def stocked(tmp_path, sandbox, write_config):
    """Ten products the platform holds at 10 each; a feed that zeroes eight of them."""
    sandbox.reset(products=[product(f"S{i}", quantity=10) for i in range(10)])
    write_feed(tmp_path / "east.csv", {f"S{i}": (10 if i < 2 else 0) for i in range(10)})
    return write_config(
        csv_warehouse("east", "east.csv"),
        guards="max_zeroed_share = 0.2\nmax_units_drop_share = 0.5\nread_back = false",
    )


def resume_when_paused(prefect_api, run_input: dict) -> threading.Thread:
    """Like a user in the UI: find the paused run, fill the approval form, submit it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    def resume() -> None:
        deadline = time.monotonic() + 60
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                paused = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))
                    )
                )
                if paused:
                    client.resume_flow_run(paused[0].id, run_input=run_input)
                    return
                time.sleep(0.2)

    thread = threading.Thread(target=resume, daemon=True)
    thread.start()
    return thread


def test_change_guard_pauses_and_approval_resumes(stocked, sandbox, prefect_api):
    thread = resume_when_paused(prefect_api, {"approve": True, "note": "stock count"})
    state, summary = run(stocked)
    thread.join(5)
    assert state.is_completed(), summary
    assert sandbox.quantities()[pid("S5")] == 0
    assert any("change guard" in note and "(approved)" in note for note in summary.notes)


def test_change_guard_rejected_sends_nothing(stocked, sandbox, prefect_api):
    thread = resume_when_paused(prefect_api, {"approve": False, "note": "feed is truncated"})
    state, result = run(stocked)
    thread.join(5)
    assert state.is_failed() and isinstance(result, ChangesNotApproved)
    assert "8 of 10" in str(result) and "feed is truncated" in str(result)
    assert puts(sandbox) == []


def test_change_guard_can_be_pre_approved_and_shows_in_a_dry_run(stocked, sandbox):
    state, summary = run(stocked, dry_run=True)
    assert state.is_completed() and puts(sandbox) == []
    assert any("a real run would ask for approval" in note for note in summary.notes)
    assert summary.diff[0].endswith(": 10 → 0")
    state, summary = run(stocked, approve_large_changes=True)
    assert state.is_completed() and sandbox.quantities()[pid("S9")] == 0


def test_drift_is_reported_and_resent_next_run(six, sandbox):
    sandbox.add_fault(Fault(status=200, if_contains_id=pid("S1")))  # says OK, applies nothing
    state, summary = run(six)
    assert state.is_completed()
    assert len(summary.drifted) == 2  # S0 and S1 shared the swallowed chunk
    assert any(
        line.startswith(f"S1 ({pid('S1')}): pushed 11, platform has 0") for line in summary.drifted
    )
    mark = len(sandbox.requests())
    state, summary = run(six)
    assert sent_ids(sandbox, mark) == {pid("S0"), pid("S1")}
    assert sandbox.quantities() == {pid(f"S{i}"): 10 + i for i in range(6)}
    assert summary.drifted == []


def test_dry_run_shows_the_diff(six, sandbox, tmp_path, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    run(six)
    write_feed(tmp_path / "east.csv", {f"S{i}": 10 + i for i in range(6)} | {"S3": 40, "S5": 1})
    mark = len(sandbox.requests())
    state, summary = run(six, dry_run=True)
    assert puts(sandbox, mark) == []
    assert summary.diff == [f"S3 ({pid('S3')}): 13 → 40", f"S5 ({pid('S5')}): 15 → 1"]
    assert (summary.to_send, summary.unchanged) == (2, 4)
    assert f"S3 ({pid('S3')}): 13 → 40" in summary.render()
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["dry-run-diff"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            ),
        )
    assert {"vendorSku": "S3", "id": pid("S3"), "old": 13, "new": 40} in eval_table(artifact.data)


def eval_table(data) -> list[dict]:
    import json

    return json.loads(data) if isinstance(data, str) else data


def test_last_good_feed_is_not_used_when_it_is_too_old_itself(tmp_path, sandbox, write_config):
    sandbox.reset(products=[product("A")])
    now = time.time()
    write_feed(tmp_path / "east.csv", {"A": 5}, mtime=now - 2 * 3600)
    state, _ = run(write_config(csv_warehouse("east", "east.csv")))
    assert state.is_completed()
    # the export stopped updating: the last good feed is the same two-hour-old file
    config = write_config(
        csv_warehouse("east", "east.csv", max_age="1h", on_stale="use_last_good"), name="b.toml"
    )
    state, result = run(config)
    assert isinstance(result, StaleFeeds)
    assert "the last good feed is stale too" in str(result)


def test_a_failed_read_back_is_a_note_not_a_failed_run(tmp_path, sandbox, write_config):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(
        "vendorSku,id,isInventoryTrackingEnabled,isBackorderingEnabled\n"
        + "".join(f"S{i},{pid(f'S{i}')},true,false\n" for i in range(3))
    )
    sandbox.reset(products=[product(f"S{i}") for i in range(3)])
    write_feed(tmp_path / "east.csv", {f"S{i}": i + 1 for i in range(3)})
    config = write_config(
        csv_warehouse("east", "east.csv"),
        lightspeed="retries = 1\nread_retries = 1",  # conftest sets read_backoff_seconds
        catalog=f'source = "file"\npath = "{catalog.name}"',
    )
    sandbox.add_fault(Fault(method="GET", path="/products", status=503, times=100))
    state, summary = run(config)
    assert state.is_completed(), summary
    assert sandbox.quantities() == {pid(f"S{i}"): i + 1 for i in range(3)}
    assert any(n.startswith("read-back failed, drift not checked this run") for n in summary.notes)
    assert len([r for r in sandbox.requests() if r.method == "GET"]) == 2  # tried, retried once


def test_a_retry_after_a_split_resends_only_what_did_not_land(tmp_path, sandbox, write_config):
    sandbox.reset(products=[product(f"S{i}") for i in range(4)])
    write_feed(tmp_path / "east.csv", {f"S{i}": 10 + i for i in range(4)})
    config = write_config(
        csv_warehouse("east", "east.csv"), lightspeed="chunk_size = 4\nretries = 1"
    )
    sandbox.add_fault(Fault(status=413, times=1))  # the whole chunk is too big: halves
    sandbox.add_fault(
        Fault(status=503, times=100, if_contains_id=pid("S2"))
    )  # then S2's half fails
    state, result = run(config)
    assert state.is_failed()
    assert sum(1 for r in puts(sandbox) if pid("S0") in r.product_ids and r.status == 200) == 1
    assert [r.product_ids for r in puts(sandbox) if r.status == 503][-1] == (pid("S2"), pid("S3"))
    assert result.summary.products_not_landed == 2  # S0 and S1 landed before the failure
    assert "did not land: S2, S3" in result.summary.failures[0]
    assert sandbox.quantities()[pid("S1")] == 11


def test_422_for_everything_is_not_blamed_on_the_items(tmp_path, sandbox, write_config):
    sandbox.reset(products=[product(f"S{i}") for i in range(4)])
    write_feed(tmp_path / "east.csv", {f"S{i}": 1 for i in range(4)})
    config = write_config(csv_warehouse("east", "east.csv"), lightspeed="chunk_size = 4")
    sandbox.add_fault(Fault(status=422, times=1000))
    state, result = run(config)
    assert state.is_failed()
    assert "not an item problem" in result.summary.failures[0]
    assert result.summary.rejected == {}
    assert result.summary.products_not_landed == 4


def test_two_runs_on_the_same_state_never_overlap(six, sandbox, tmp_path):
    from tasks.state.lock import StateBusy

    with state_of(six).exclusive("the-other-run"):
        state, result = run(six)
    assert isinstance(result, StateBusy)
    assert "in use by run the-other-run (pid" in str(result)
    assert puts(sandbox) == []
    state, _ = run(six)  # the lock went with the other run
    assert state.is_completed()
