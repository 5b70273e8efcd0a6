"""The whole flow, for real: Prefect server, GX, files on disk, HTTP to the sandbox on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import pytest
from builders import TOKEN, csv_warehouse, pid, product

from flows.sync import inventory_sync
from sandbox.server import Fault, SandboxServer
from tasks.sources.extract import ExtractFailed

pytestmark = pytest.mark.usefixtures("prefect_api", "token_env")


def run(config: Path, **params):
    state = inventory_sync(config_path=str(config), return_state=True, **params)
    return state, state.result(raise_on_failure=False)


def puts(sandbox) -> list:
    return [r for r in sandbox.requests() if r.method == "PUT"]


def feed(path: Path, *rows: tuple[str, object], header: str = "sku,qty") -> str:
    path.write_text(header + "\n" + "".join(f"{s},{q}\n" for s, q in rows), encoding="utf-8")
    return path.name


def simple_setup(tmp_path, sandbox, write_config, n: int = 6, chunk_size: int = 2, **lightspeed):
    """n tracked products S0..S{n-1}, one CSV warehouse listing each with quantity 10+i."""
    sandbox.reset(products=[product(f"S{i}") for i in range(n)])
    feed(tmp_path / "east.csv", *[(f"S{i}", 10 + i) for i in range(n)])
    extra = "".join(f"{k} = {v}\n" for k, v in lightspeed.items())
    return write_config(
        csv_warehouse("east", "east.csv"), lightspeed=f"chunk_size = {chunk_size}\n{extra}"
    )


def test_three_warehouses_end_to_end(tmp_path, sandbox, write_config):
    sandbox.reset(
        products=[
            product("A", tracked=[True], quantity=99),
            product("B", tracked=True),
            product("C", tracked=True, quantity=5),  # in no warehouse → 0
            product("U", tracked=[False], quantity=3),  # not tracked → untouched
            product("N", tracked=None, quantity=4),  # flag absent = not tracked
            product("D", id=pid("D1"), quantity=8),  # ambiguous pair → untouched
            product("D", id=pid("D2"), quantity=8),
            product("H", quantity=6),  # a bad row holds it
        ]
    )
    feed(
        tmp_path / "east.csv",
        ("A", 5),
        ("A", 3),
        ("B", "-2"),
        ("D", 1),
        ("H", "4"),
        ("ZZZ", 1),
        ("U", 50),
    )
    (tmp_path / "west.csv").write_bytes(
        "Artikel;Bestand\r\nA;10\r\nB;7\r\nH;zwölf\r\n".encode("cp1252")
    )
    pl.DataFrame({"code": ["A", "B"], "on_hand": [1, 1]}).write_parquet(tmp_path / "north.parquet")
    config = write_config(
        csv_warehouse("east", "east.csv", safety_stock=1)
        + csv_warehouse(
            "west", "west.csv", sku="Artikel", qty="Bestand", delimiter=";", encoding="cp1252"
        )
        + '[[warehouses]]\nname = "north"\nkind = "parquet"\npath = "north.parquet"\n'
        'sku_column = "code"\nquantity_column = "on_hand"\n',
        lightspeed="chunk_size = 2",
    )
    state, summary = run(config)
    assert state.is_completed(), summary
    held = sandbox.quantities()
    assert held[pid("A")] == (5 + 3 - 1) + 10 + 1
    assert held[pid("B")] == 0 + 7 + 1  # east: -2 - 1 → floored at 0
    assert held[pid("C")] == 0
    assert (held[pid("U")], held[pid("N")]) == (3, 4)
    assert (held[pid("D1")], held[pid("D2")]) == (8, 8)
    assert held[pid("H")] == 6
    sent = [i for r in puts(sandbox) for i in r.product_ids]
    assert sorted(sent) == sorted([pid("A"), pid("B"), pid("C")])
    assert summary.rows_flagged == {
        "negative quantity": 1,
        "quantity is not an integer": 1,
        "unknown SKU": 1,
    }
    assert (summary.chunks, summary.chunks_accepted, summary.attempts) == (2, 2, 2)
    quarantine = pl.read_csv(summary.files["Quarantine report"])
    assert quarantine.filter(pl.col("reason") == "quantity is not an integer").select(
        "warehouse", "line", "sku_text", "quantity_text"
    ).rows() == [("west", 4, "H", "zwölf")]


def test_dry_run_sends_nothing(tmp_path, sandbox, write_config):
    config = simple_setup(tmp_path, sandbox, write_config)
    state, summary = run(config, dry_run=True)
    assert state.is_completed()
    assert summary.dry_run and summary.to_send == 6 and summary.chunks == 3
    assert puts(sandbox) == []
    assert set(sandbox.quantities().values()) == {0}


def test_429_waits_out_retry_after_then_lands(tmp_path, sandbox, write_config):
    config = simple_setup(tmp_path, sandbox, write_config)
    sandbox.add_fault(Fault(status=429, retry_after=1, if_contains_id=pid("S2")))
    state, summary = run(config)
    assert state.is_completed()
    tries = [r for r in puts(sandbox) if pid("S2") in r.product_ids]
    assert [r.status for r in tries] == [429, 200]
    assert tries[1].at - tries[0].at >= 1.0
    assert sandbox.quantities() == {pid(f"S{i}"): 10 + i for i in range(6)}
    assert (summary.attempts, summary.retries) == (4, 1)


def test_dropped_connection_after_apply_is_retried_safely(tmp_path, sandbox, write_config):
    config = simple_setup(tmp_path, sandbox, write_config)
    sandbox.add_fault(Fault(drop="after", if_contains_id=pid("S4")))
    state, summary = run(config)
    assert state.is_completed()
    tries = [r for r in puts(sandbox) if pid("S4") in r.product_ids]
    assert [r.dropped for r in tries] == [True, False]
    assert sandbox.quantities() == {pid(f"S{i}"): 10 + i for i in range(6)}


def test_422_rejected_product_is_quarantined_and_the_rest_lands(tmp_path, sandbox, write_config):
    """A product deleted on the platform but still in the catalog file: only it is refused."""
    catalog = tmp_path / "catalog.csv"
    ids = [(f"S{i}", pid(f"S{i}")) for i in range(6)]
    catalog.write_text(
        "vendorSku,id,isInventoryTrackingEnabled,isBackorderingEnabled\n"
        + "".join(f"{s},{i},true,\n" for s, i in ids)
    )
    sandbox.reset(products=[product(f"S{i}") for i in range(6) if i != 3])
    feed(tmp_path / "east.csv", *[(f"S{i}", 10 + i) for i in range(6)])
    config = write_config(
        csv_warehouse("east", "east.csv"),
        lightspeed="chunk_size = 2",
        catalog=f'source = "file"\npath = "{catalog.name}"',
    )
    state, summary = run(config)
    assert state.is_completed(), summary
    chunk = [r for r in puts(sandbox) if pid("S2") in r.product_ids]
    assert [(r.status, r.product_ids) for r in chunk] == [
        (422, (pid("S2"), pid("S3"))),
        (200, (pid("S2"),)),
    ]
    assert sandbox.quantities() == {pid(f"S{i}"): 10 + i for i in range(6) if i != 3}
    assert summary.rejected == {pid("S3"): "unknown product id"}
    assert (summary.products_sent, summary.chunks_failed) == (5, 0)
    not_landed = pl.read_csv(summary.files["Products that did not land"])
    assert not_landed["id"].to_list() == [pid("S3")]
    # the rejected product was never recorded as pushed, so the next run tries it again
    state, summary = run(config)
    assert [r.product_ids for r in puts(sandbox)][-1] == (pid("S3"),)


def test_422_that_names_no_id_is_isolated_by_splitting(tmp_path, sandbox, write_config):
    config = simple_setup(tmp_path, sandbox, write_config, n=8, chunk_size=8)
    sandbox.add_fault(Fault(status=422, times=100, if_contains_id=pid("S5")))
    state, summary = run(config)
    assert state.is_completed(), summary
    assert set(summary.rejected) == {pid("S5")}
    assert sandbox.quantities() == {pid(f"S{i}"): (10 + i if i != 5 else 0) for i in range(8)}
    # 8 → 4+4 → 2+2 → 1+1: log2(8) = 3 halvings isolate the bad item
    assert [len(r.product_ids) for r in puts(sandbox) if r.status == 422] == [8, 4, 2, 1]


def test_413_splits_the_chunk_until_it_fits(tmp_path, sandbox, write_config, monkeypatch):
    small = SandboxServer(
        products=[product(f"S{i}") for i in range(7)], token=TOKEN, max_products_per_call=3, port=0
    )
    with small:
        monkeypatch.setenv("LIGHTSPEED_BASE_URL", small.url)
        config = simple_setup(tmp_path, sandbox, write_config, n=7, chunk_size=7)
        state, summary = run(config)
        assert state.is_completed(), summary
        assert small.quantities() == {pid(f"S{i}"): 10 + i for i in range(7)}
        sizes = [(len(r.product_ids), r.status) for r in small.requests() if r.method == "PUT"]
        assert sizes[0] == (7, 413) and all(n <= 3 for n, status in sizes if status == 200)
        assert summary.requests == len(sizes)


def test_503_twice_then_success(tmp_path, sandbox, write_config):
    config = simple_setup(tmp_path, sandbox, write_config)
    sandbox.add_fault(Fault(status=503, times=2, if_contains_id=pid("S0")))
    state, summary = run(config)
    assert state.is_completed()
    assert [r.status for r in puts(sandbox) if pid("S0") in r.product_ids] == [503, 503, 200]


def test_transient_errors_that_never_heal_fail_the_chunk_after_the_retries(
    tmp_path, sandbox, write_config
):
    config = simple_setup(tmp_path, sandbox, write_config, retries=2)
    sandbox.add_fault(Fault(status=500, times=100, if_contains_id=pid("S5")))
    state, result = run(config)
    assert state.is_failed()
    assert len([r for r in puts(sandbox) if pid("S5") in r.product_ids]) == 3
    [failure] = result.summary.failures
    assert failure.startswith(
        "chunk 3/3 S4…S5 (2 products) after 3 attempt(s): PUT /inventory: HTTP 500"
    )
    assert result.summary.products_sent == 4


def test_wrong_token_fails_fast_without_a_retry_storm(tmp_path, sandbox, write_config, monkeypatch):
    config = simple_setup(tmp_path, sandbox, write_config)
    monkeypatch.setenv("LIGHTSPEED_TOKEN", "wrong-token")
    started = time.monotonic()
    state, result = run(config)
    assert state.is_failed()
    assert [r.status for r in sandbox.requests()] == [401]  # the catalog GET, once
    assert "HTTP 401" in str(result) and "check the token" in str(result)
    assert "wrong-token" not in str(result)
    assert time.monotonic() - started < 30


def test_wrong_token_on_put_stops_further_chunks(tmp_path, sandbox, write_config, monkeypatch):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(
        "vendorSku,id,isInventoryTrackingEnabled,isBackorderingEnabled\n"
        + "".join(f"S{i},{pid(f'S{i}')},true,false\n" for i in range(20))
    )
    sandbox.reset(products=[product(f"S{i}") for i in range(20)])
    feed(tmp_path / "east.csv", *[(f"S{i}", 1) for i in range(20)])
    config = write_config(
        csv_warehouse("east", "east.csv"),
        lightspeed="chunk_size = 1\nmax_concurrency = 2",
        catalog=f'source = "file"\npath = "{catalog.name}"',
    )
    monkeypatch.setenv("LIGHTSPEED_TOKEN", "wrong-token")
    state, result = run(config)
    assert state.is_failed()
    assert 1 <= len(puts(sandbox)) <= 2  # at most the chunks already in flight
    assert all(r.status == 401 for r in puts(sandbox))
    assert result.summary.products_not_landed == 20
    assert any("not sent: an earlier chunk got HTTP 401" in f for f in result.summary.failures)


def test_an_unreadable_warehouse_stops_the_run_before_anything_is_sent(
    tmp_path, sandbox, write_config
):
    sandbox.reset(products=[product("A")])
    feed(tmp_path / "east.csv", ("A", 1))
    feed(tmp_path / "west.csv", ("A", 1), header="sku,amount")
    config = write_config(
        csv_warehouse("east", "east.csv")
        + csv_warehouse("west", "west.csv")
        + csv_warehouse("south", "south-*.csv")
    )
    state, result = run(config)
    assert state.is_failed()
    assert isinstance(result, ExtractFailed)
    message = str(result)
    assert "2 of 3 warehouse(s) could not be read; nothing was sent" in message
    assert "warehouse 'west'" in message and "missing column(s) 'qty'" in message
    assert "warehouse 'south'" in message and "no file matches" in message
    assert puts(sandbox) == []


def test_the_ui_gets_artifacts_and_one_task_run_per_chunk(
    tmp_path, sandbox, write_config, prefect_api
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    config = simple_setup(tmp_path, sandbox, write_config)
    sandbox.add_fault(Fault(status=503, if_contains_id=pid("S2")))
    feed(tmp_path / "east.csv", *[(f"S{i}", 10 + i) for i in range(6)], ("ZZ", "n/a"))
    state, summary = run(config)
    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        # task-run states reach the server as events, a moment after the flow returns
        deadline = time.monotonic() + 30
        while True:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            chunk_runs = [t for t in task_runs if t.name.startswith("chunk ")]
            settled = len(chunk_runs) == 3 and all(
                t.state is not None and t.state.is_completed() for t in chunk_runs
            )
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    by_key = {a.key: a for a in artifacts}
    assert {"sync-summary", "quarantine", "load-progress"} <= set(by_key)
    assert "Sent 6 of 6 product(s)" in by_key["sync-summary"].data
    assert "quantity is not an integer" in str(by_key["quarantine"].data)
    assert by_key["load-progress"].data == 100.0
    chunks = {t.name: t for t in task_runs if t.name.startswith("chunk ")}
    assert set(chunks) == {
        "chunk 1/3 S0…S1 (2 products)",
        "chunk 2/3 S2…S3 (2 products)",
        "chunk 3/3 S4…S5 (2 products)",
    }
    assert chunks["chunk 2/3 S2…S3 (2 products)"].run_count == 2  # the 503, then success
    assert sorted(t.run_count for t in chunks.values()) == [1, 1, 2]
    assert all(t.state.is_completed() for t in chunks.values())


def test_a_run_over_some_warehouses_counts_the_others_last_good_feed(
    tmp_path, sandbox, write_config
):
    sandbox.reset(products=[product("E"), product("W"), product("B")])
    config = write_config(csv_warehouse("east", "east.csv") + csv_warehouse("west", "west.csv"))
    feed(tmp_path / "east.csv", ("E", 3), ("B", 1))
    feed(tmp_path / "west.csv", ("W", 9), ("B", 2))
    state, result = run(config, warehouses=["east"])
    assert state.is_failed() and "warehouse 'west': not read in this run" in str(result)
    assert "no last good feed yet" in str(result)

    state, _ = run(config)  # a full run records every warehouse's last good feed
    assert sandbox.quantities() == {pid("E"): 3, pid("W"): 9, pid("B"): 3}
    feed(tmp_path / "east.csv", ("E", 4), ("B", 5))
    feed(tmp_path / "west.csv", ("W", 0), ("B", 0))  # not read by the next run
    state, summary = run(config, warehouses=["east"], chunk_size=1)
    assert state.is_completed(), summary
    # B is east's 5 plus west's last good 2, never east's partial sum alone; W is untouched
    assert sandbox.quantities() == {pid("E"): 4, pid("W"): 9, pid("B"): 7}
    assert any(note.startswith("west: not read in this run") for note in summary.notes)
    assert summary.chunks == 2  # E and B changed, one product per chunk
    state, result = run(config, warehouses=["nowhere"])
    assert state.is_failed() and "no warehouse named 'nowhere'" in str(result)


def test_each_run_emits_an_event_with_its_counts(tmp_path, sandbox, write_config, prefect_api):
    import httpx

    config = simple_setup(tmp_path, sandbox, write_config, retries=0)
    feed(tmp_path / "east.csv", *[(f"S{i}", 10 + i) for i in range(6)], ("NOT-IN-CATALOG", 1))
    sandbox.add_fault(Fault(status=500, times=5, if_contains_id=pid("S0")))
    state, _ = run(config)
    assert state.is_failed()
    flow_run_id = str(state.state_details.flow_run_id)
    deadline = time.monotonic() + 20
    events: list = []
    while time.monotonic() < deadline and not events:
        response = httpx.post(
            f"{prefect_api}/events/filter",
            json={"filter": {"event": {"prefix": ["inventory-sync.run."]}}, "limit": 50},
        )
        events = [
            e
            for e in response.json()["events"]
            if e["resource"]["prefect.resource.id"].endswith(flow_run_id)
        ]
        time.sleep(0.3)
    [event] = events
    assert event["event"] == "inventory-sync.run.failed"
    assert event["payload"]["products_not_landed"] == 2
    assert event["payload"]["products_sent"] == 4
    assert "HTTP 500" in event["payload"]["error"]
    assert event["resource"]["inventory-sync.quarantined"] == "true"  # the unknown SKU
    assert event["resource"]["inventory-sync.rejected"] == "false"
