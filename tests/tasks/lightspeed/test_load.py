"""Requests (what the API takes in one PUT) inside chunks (what a user watches as a task run).

Case tables on pure functions and on a chunk's requests sent through an httpx.MockTransport
fake of PUT /inventory; then the real thing: a chunk retried by Prefect against the sandbox.
"""

from __future__ import annotations

import json
import math
import threading
import time

import httpx
import polars as pl
import pytest
from builders import TOKEN, csv_warehouse, pid, product
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from sandbox.server import Fault
from tasks.config.settings import LightspeedSettings
from tasks.lightspeed.chunks import MAX_TASK_RUNS, chunk_size_for, plan_requests, unlanded
from tasks.lightspeed.client import FatalError, LightspeedClient, RetryableError, Unauthorized
from tasks.lightspeed.put_requests import chunk_error, send_requests


def settings(**fields) -> LightspeedSettings:
    return LightspeedSettings(base_url="https://api.example.test", **fields)


def products(n: int, prefix: str = "S") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(n)],
            "vendorSku": [f"{prefix}{i:03d}" for i in range(n)],
            "quantity": list(range(n)),
        },
        schema={"id": pl.String, "vendorSku": pl.String, "quantity": pl.Int64},
    )


@pytest.mark.parametrize(
    ("payload", "request_size", "chunk_size", "expected"),
    [
        (1_000_000, 250, None, 20_000),  # 4,000 requests in 50 chunks of 80
        (1_000_000, 500, None, 20_000),
        (1_000_000, 100, None, 20_000),  # a smaller cap: more requests, not more task runs
        (1_000_001, 250, None, 20_250),  # whole requests, still at most 50 chunks
        (5_000_000, 500, None, 100_000),
        (20_000, 500, None, 2_000),  # the 2 % cycle: max_concurrency (4) requests per chunk
        (6, 500, None, 2_000),
        (0, 500, None, 2_000),
        (1_000_000, 250, 2, 2),  # a configured chunk_size wins, even below request_size
        (1_000_000, 250, 7_000, 7_000),
    ],
)
def test_chunk_size_by_default_and_configured(payload, request_size, chunk_size, expected):
    chosen = chunk_size_for(payload, settings(request_size=request_size, chunk_size=chunk_size))
    assert chosen == expected


@given(payload=st.integers(0, 10_000_000), request_size=st.integers(1, 2_000))
def test_default_chunks_are_whole_requests_and_at_most_max_task_runs(payload, request_size):
    size = chunk_size_for(payload, settings(request_size=request_size))
    assert size >= request_size and size % request_size == 0
    assert math.ceil(payload / size) <= MAX_TASK_RUNS


@pytest.mark.parametrize("max_concurrency", [1, 2, 4, 8])
def test_a_default_chunk_holds_enough_requests_to_fill_the_slots(max_concurrency):
    chosen = settings(request_size=500, max_concurrency=max_concurrency)
    assert chunk_size_for(20_000, chosen) == 500 * max_concurrency


@pytest.mark.parametrize(
    ("chunk", "request_size", "sizes"),
    [(5, 2, [2, 2, 1]), (2, 500, [2]), (500, 250, [250, 250]), (1, 1, [1]), (0, 10, [])],
)
def test_a_chunk_is_sent_in_requests_of_at_most_request_size(chunk, request_size, sizes):
    requests = plan_requests(products(chunk), request_size)
    assert [r.height for r in requests] == sizes
    assert (pl.concat(requests).equals(products(chunk))) if requests else chunk == 0


@pytest.mark.parametrize(
    ("landed", "left"),
    [
        (set(), {1: ["S0", "S1"], 2: ["S2", "S3"], 3: ["S4"]}),
        ({"S0", "S1"}, {2: ["S2", "S3"], 3: ["S4"]}),  # request 1 landed: not sent again
        ({"S0", "S1", "S2"}, {2: ["S3"], 3: ["S4"]}),  # half of request 2 landed (a 413 split)
        ({"S0", "S1", "S2", "S3", "S4"}, {}),
    ],
)
def test_a_retry_sends_only_what_did_not_land(landed, left):
    requests = plan_requests(products(5), 2)
    assert {n: r["id"].to_list() for n, r in unlanded(requests, landed).items()} == left


class FakeInventoryApi:
    """PUT /inventory as httpx.MockTransport: a cap, and faults by product id."""

    def __init__(self, cap: int = 1000) -> None:
        self.cap = cap
        self.calls: list[list[str]] = []
        self.statuses: list[int] = []
        self.faults: dict[str, tuple[int, dict[str, str], str]] = {}  # id -> status, headers, body
        self.lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        ids = [p["id"] for p in json.loads(request.content)["products"]]
        status, headers, body = 200, {}, "{}"
        if len(ids) > self.cap:
            status, body = 413, '{"error": "too many products"}'
        for pid_ in ids:
            if pid_ in self.faults:
                status, headers, body = self.faults[pid_]
                break
        with self.lock:
            self.calls.append(ids)
            self.statuses.append(status)
        return httpx.Response(status, headers=headers, content=body.encode())

    def client(self, **fields) -> LightspeedClient:
        return LightspeedClient(
            settings(**fields), SecretStr(TOKEN), transport=httpx.MockTransport(self.handle)
        )


def send(api: FakeInventoryApi, chunk: int, request_size: int, concurrency: int = 4, **fields):
    """Send a chunk's requests; returns (outcomes, ids committed as landed, the chunk's error)."""
    committed: list[str] = []
    lock = threading.Lock()

    def commit(part: pl.DataFrame) -> None:
        with lock:
            committed.extend(part["id"])

    client = api.client(max_concurrency=concurrency, **fields)
    requests = dict(enumerate(plan_requests(products(chunk), request_size), start=1))
    outcomes = send_requests(client, requests, concurrency, commit)
    return outcomes, committed, chunk_error(outcomes)


def test_every_request_lands_and_is_committed_once():
    api = FakeInventoryApi()
    outcomes, committed, error = send(api, 10, 3)
    assert error is None
    assert sorted(committed) == sorted(products(10)["id"])
    assert [(o.number, o.accepted, o.calls) for o in outcomes] == [
        (1, 3, 1),
        (2, 3, 1),
        (3, 3, 1),
        (4, 1, 1),
    ]
    assert outcomes[0].line(4) == "request 1/4 S000…S002 (3 products): 3 accepted in 1 call(s)"


@pytest.mark.parametrize(
    ("faults", "kind", "message", "committed"),
    [
        ({"S4": 503}, RetryableError, "PUT /inventory: HTTP 503", "S0 S1 S2 S6 S7 S8"),
        (
            {"S1": 503, "S7": 500},
            RetryableError,
            "2 of 3 request(s) did not land; PUT /inventory: HTTP 503",
            "S3 S4 S5",
        ),
        ({"S4": 400}, FatalError, "PUT /inventory: HTTP 400 not now", "S0 S1 S2 S6 S7 S8"),
        (  # a transient error wins: a retry can still land that request
            {"S1": 400, "S7": 503},
            RetryableError,
            "2 of 3 request(s) did not land; PUT /inventory: HTTP 503",
            "S3 S4 S5",
        ),
    ],
)
def test_a_request_that_fails_leaves_the_others_landed(faults, kind, message, committed):
    api = FakeInventoryApi()
    for pid_, status in faults.items():
        api.faults[pid_] = (status, {}, '{"error": "not now"}')
    outcomes, landed, error = send(api, 9, 3)
    assert isinstance(error, kind) and str(error).startswith(message)
    assert sorted(landed) == committed.split()
    assert [o.error is None for o in outcomes] == [
        not set(o.products["id"]) & set(faults) for o in outcomes
    ]


def test_a_422_that_names_an_item_isolates_only_that_item():
    api = FakeInventoryApi()
    api.faults["S4"] = (422, {}, json.dumps({"products": [{"id": "S4", "error": "deleted"}]}))
    outcomes, committed, error = send(api, 9, 3)
    assert error is None
    assert sorted(committed) == sorted(set(products(9)["id"]) - {"S4"})
    assert {pid_: why for o in outcomes for pid_, why in o.rejected.items()} == {"S4": "deleted"}
    assert [o.calls for o in outcomes] == [1, 2, 1]  # only request 2 was sent again, less S4
    assert ["S3", "S5"] in api.calls


def test_401_stops_the_chunks_other_requests_from_starting():
    api = FakeInventoryApi()
    api.faults["S0"] = (401, {}, '{"error": "bad token"}')
    outcomes, committed, error = send(api, 9, 3, concurrency=1)
    assert isinstance(error, Unauthorized)
    assert len(api.calls) == 1 and committed == []
    assert [o.sent for o in outcomes] == [True, False, False]
    assert outcomes[1].line(3).startswith("request 2/3 S003…S005 (3 products): not sent")


def test_retry_after_stops_starting_requests_and_is_passed_on():
    api = FakeInventoryApi()
    api.faults["S3"] = (429, {"Retry-After": "7"}, '{"error": "slow down"}')
    outcomes, committed, error = send(api, 9, 3, concurrency=1)
    assert isinstance(error, RetryableError) and error.retry_after == 7
    assert committed == ["S0", "S1", "S2"]
    assert [o.sent for o in outcomes] == [True, True, False]


def test_a_413_halves_and_the_run_remembers_the_cap():
    api = FakeInventoryApi(cap=3)
    outcomes, committed, error = send(api, 16, 8, concurrency=1)
    assert error is None and sorted(committed) == sorted(products(16)["id"])
    assert api.statuses.count(413) == 2  # 8 and then 4 refused; request 2 split before sending
    accepted = [ids for ids, status in zip(api.calls, api.statuses, strict=True) if status == 200]
    assert all(len(ids) <= 3 for ids in accepted)
    assert sum(o.calls for o in outcomes) == len(api.calls)


@pytest.mark.usefixtures("token_env")
def test_a_chunk_retry_resends_only_the_requests_that_did_not_land(
    tmp_path, sandbox, write_config, prefect_api
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterTaskRunId,
    )

    from flows.sync import inventory_sync

    sandbox.reset(products=[product(f"S{i}") for i in range(6)])
    (tmp_path / "east.csv").write_text("sku,qty\n" + "".join(f"S{i},{10 + i}\n" for i in range(6)))
    config = write_config(
        csv_warehouse("east", "east.csv"),
        lightspeed="chunk_size = 6\nrequest_size = 2\nmax_concurrency = 2",
    )
    sandbox.add_fault(Fault(status=503, times=1, if_contains_id=pid("S2")))
    state = inventory_sync(config_path=str(config), return_state=True)
    summary = state.result()
    assert state.is_completed(), summary
    puts = [r for r in sandbox.requests() if r.method == "PUT"]
    sent = [(r.product_ids, r.status) for r in puts]
    assert sorted(sent) == sorted(
        [
            ((pid("S0"), pid("S1")), 200),
            ((pid("S2"), pid("S3")), 503),
            ((pid("S2"), pid("S3")), 200),  # the retry: request 2 only
            ((pid("S4"), pid("S5")), 200),
        ]
    )
    assert sandbox.quantities() == {pid(f"S{i}"): 10 + i for i in range(6)}
    assert (summary.chunks, summary.attempts, summary.requests) == (1, 2, 4)  # 4 PUTs in all
    assert summary.products_sent == 6  # the first attempt's two requests count too

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        deadline, messages = time.monotonic() + 30, []
        while time.monotonic() < deadline:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            chunks = [t for t in runs if t.name.startswith("chunk ")]  # once the server has it
            logs = client.read_logs(
                log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[c.id for c in chunks]))
            )
            messages = [log.message for log in logs]
            done = chunks and chunks[0].run_count == 2
            if done and sum(m.startswith("attempt 2:") for m in messages) == 2:
                break
            time.sleep(0.3)
    [chunk] = chunks
    assert chunk.name == "chunk 1/1 S0…S5 (6 products)" and chunk.run_count == 2
    request_lines = [
        line for m in messages for line in m.splitlines() if line.startswith("request ")
    ]
    assert "request 1/3 S0…S1 (2 products): 2 accepted in 1 call(s)" in request_lines
    assert any(m.startswith("request 2/3 S2…S3 (2 products): 0 accepted") for m in request_lines)
    assert "attempt 2: 2 of 3 request(s) landed earlier; sending 1" in messages
    assert request_lines.count("request 2/3 S2…S3 (2 products): 2 accepted in 1 call(s)") == 1


@pytest.mark.usefixtures("token_env")
def test_a_progress_artifact_the_server_refuses_is_a_warning_not_a_failed_load(
    tmp_path, sandbox, write_config, prefect_api, monkeypatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    import tasks.lightspeed.load as load_module
    from flows.sync import inventory_sync

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("artifact store unavailable")  # the seam under test

    monkeypatch.setattr(load_module, "create_progress_artifact", refuse)
    sandbox.reset(products=[product(f"S{i}") for i in range(4)])
    (tmp_path / "east.csv").write_text("sku,qty\n" + "".join(f"S{i},{5 + i}\n" for i in range(4)))
    config = write_config(csv_warehouse("east", "east.csv"), lightspeed="request_size = 2")
    state = inventory_sync(config_path=str(config), return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    assert sandbox.quantities() == {pid(f"S{i}"): 5 + i for i in range(4)}
    flow_run_id = state.state_details.flow_run_id
    wanted = "the load's progress artifact was not updated: artifact store unavailable"
    with get_client(sync_client=True) as client:
        deadline, messages = time.monotonic() + 30, []
        while time.monotonic() < deadline and wanted not in messages:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            messages = [log.message for log in logs]
            time.sleep(0.3)
        assert not client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )[0].state.is_failed()
    assert wanted in messages
