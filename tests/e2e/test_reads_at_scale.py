"""Reads that survive a real API at scale, against the sandbox: flaky pages, a kill mid-refresh,
a rate-limit bucket, a catalog that changes between runs, a bounded read-back."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from builders import TOKEN, csv_warehouse, pid, product, state_of

from flows.sync import inventory_sync
from sandbox.server import Bucket, Fault
from tasks.lightspeed.catalog import CatalogError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api", "token_env")]

N = 20_000


def run(config: Path, **params):
    state = inventory_sync(config_path=str(config), return_state=True, **params)
    return state, state.result(raise_on_failure=False)


def write_feed(path: Path, quantities: dict[str, int]) -> None:
    path.write_text("sku,qty\n" + "".join(f"{s},{q}\n" for s, q in quantities.items()))


def page_fetches(sandbox, since: int = 0) -> Counter[str]:
    """Successful GET /products answers per page (the query names the page)."""
    return Counter(
        r.query
        for r in sandbox.requests()[since:]
        if r.method == "GET" and r.status == 200 and not r.dropped
    )


def kept_catalog_age(state_dir: Path, age: timedelta) -> None:
    """Make the kept catalog look `age` old, as if it had been refreshed then."""
    with sqlite3.connect(state_dir / "state.sqlite3") as db:
        db.execute("UPDATE catalog SET refreshed_at = ?", ((datetime.now(UTC) - age).isoformat(),))


@pytest.fixture
def big(tmp_path, sandbox):
    """20,000 tracked products on the sandbox and a feed listing each; returns the quantities."""
    skus = [f"P{i:05d}" for i in range(N)]
    sandbox.reset(products=[product(sku) for sku in skus])
    quantities = {sku: (i * 7) % 50 for i, sku in enumerate(skus)}
    write_feed(tmp_path / "east.csv", quantities)
    return quantities


def test_a_large_sync_completes_through_flaky_pages_and_reads_each_page_once(
    big, sandbox, write_config
):
    """2 % of pages fail (503, 429 with Retry-After, dropped connections), and 2 % of PUTs."""
    pages = {"method": "GET", "path": "/products", "rate": 0.007}
    sandbox.add_fault(Fault(**pages, status=503, seed=1))
    sandbox.add_fault(Fault(**pages, status=429, retry_after=1, seed=2))
    sandbox.add_fault(Fault(**pages, drop="before", seed=3))
    sandbox.add_fault(Fault(method="PUT", path="/inventory", status=503, rate=0.02, seed=4))
    config = write_config(
        csv_warehouse("east", "east.csv"),
        lightspeed="per_page = 100\nchunk_size = 500\nretries = 5",
        guards="max_zeroed_share = 1.0\nmax_units_drop_share = 1.0\nread_back = false",
    )
    state, summary = run(config)
    assert state.is_completed(), summary
    assert sandbox.quantities() == {pid(sku): q for sku, q in big.items()}
    fetched = page_fetches(sandbox)
    assert len(fetched) == N // 100 and set(fetched.values()) == {1}
    failed = [r for r in sandbox.requests() if r.method == "GET" and (r.status != 200 or r.dropped)]
    assert failed, "the faults should have hit some pages"
    assert f"{len(failed)} retried" in summary.catalog
    assert "refreshed from the API now" in summary.catalog


def test_a_kill_during_a_refresh_resumes_where_it_stopped_and_never_uses_half_a_catalog(
    tmp_path, sandbox, write_config, prefect_api
):
    skus = [f"K{i:04d}" for i in range(3_000)]
    sandbox.reset(products=[product(sku) for sku in skus])
    write_feed(tmp_path / "east.csv", {sku: 5 for sku in skus})
    config = write_config(
        csv_warehouse("east", "east.csv"),
        lightspeed="per_page = 10",
        guards="max_zeroed_share = 1.0\nmax_units_drop_share = 1.0\nread_back = false",
    )
    sandbox.add_fault(Fault(method="GET", path="/products", delay=0.02, rate=1.0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_API_URL": prefect_api, "LIGHTSPEED_TOKEN": TOKEN}
    command = [sys.executable, "-m", "flows.cli", "run", "--config", str(config)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while sum(page_fetches(sandbox).values()) < 60:
            assert process.poll() is None and time.monotonic() < deadline, "the refresh never ran"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    store = state_of(config)
    progress = store.refresh_progress()
    assert progress is not None and progress.pages >= 50
    assert store.kept_catalog() is None  # half a catalog is never kept as whole
    assert [r for r in sandbox.requests() if r.method == "PUT"] == []
    before = len(sandbox.requests())
    first_read = page_fetches(sandbox)

    sandbox.reset()  # no faults: the second run is quick
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    again = page_fetches(sandbox, 0)
    both = first_read + again
    assert len(both) == 300  # every page
    # a page answered but not yet kept when the kill came may be read twice; no other page is
    assert sum(n - 1 for n in both.values()) <= 1, [q for q, n in both.items() if n > 1]
    assert "finishing the refresh an earlier run left" in result.stdout
    assert sandbox.quantities() == {pid(sku): 5 for sku in skus}
    assert store.refresh_progress() is None and store.kept_catalog().frame.height == 3_000
    assert before > 0


def test_a_rate_limited_platform_is_paced_not_hammered(big, tmp_path, sandbox, write_config):
    """A bucket of 60 units draining 40/s: the first sync and a 2 % delta, few 429s between them."""
    sandbox.set_bucket(Bucket(size=60, drip_per_second=40, get_cost=1, put_cost=10))
    config = write_config(
        csv_warehouse("east", "east.csv"), lightspeed="per_page = 250\nchunk_size = 500"
    )
    state, first = run(config)
    assert state.is_completed(), first
    changed = {sku: q + 1 for sku, q in list(big.items())[:: N // 400]}  # 2 %
    write_feed(tmp_path / "east.csv", big | changed)
    state, delta = run(config)
    assert state.is_completed(), delta
    assert delta.products_sent == len(changed) == 400
    assert sandbox.quantities() == {pid(sku): q for sku, q in (big | changed).items()}
    limited = [r for r in sandbox.requests() if r.status == 429]
    assert len(limited) <= 3
    assert first.waited_seconds > 1  # 80 GETs and 40 PUTs of 10 units cannot fit in 60
    assert "for room in the platform's rate limit" in first.render()


def test_catalog_changes_reach_the_platform_after_the_next_refresh(tmp_path, sandbox, write_config):
    sandbox.reset(products=[product("A"), product("B", tracked=False), product("C"), product("Z")])
    write_feed(tmp_path / "east.csv", {"A": 1, "B": 2, "C": 3, "D": 4, "Z": 9})
    config = write_config(csv_warehouse("east", "east.csv"))
    state, first = run(config)
    assert state.is_completed(), first
    assert sandbox.quantities() == {pid("A"): 1, pid("B"): 0, pid("C"): 3, pid("Z"): 9}
    sandbox.upsert_products(
        [product("B", tracked=True), product("C", tracked=False, quantity=3), product("D")]
    )

    state, kept = run(config)  # the kept catalog does not know yet
    assert state.is_completed(), kept
    assert "kept from the API" in kept.catalog
    assert any("1 row(s) name a SKU the catalog does not know" in n for n in kept.notes)
    assert sandbox.quantities()[pid("D")] == 0 and sandbox.quantities()[pid("B")] == 0

    write_feed(tmp_path / "east.csv", {"A": 1, "B": 2, "C": 30, "D": 4, "Z": 9})
    state, refreshed = run(config, refresh_catalog=True)
    assert state.is_completed(), refreshed
    held = sandbox.quantities()
    assert (held[pid("B")], held[pid("D")]) == (2, 4)  # newly tracked, and new
    assert held[pid("C")] == 3  # no longer tracked: 30 is not sent
    assert refreshed.rows_flagged.get("unknown SKU", 0) == 0


def test_a_failed_refresh_keeps_the_previous_catalog_until_it_is_too_old(
    tmp_path, sandbox, write_config
):
    sandbox.reset(products=[product(f"S{i}") for i in range(5)])
    write_feed(tmp_path / "east.csv", {f"S{i}": i for i in range(5)})
    config = write_config(
        csv_warehouse("east", "east.csv"),
        lightspeed="retries = 0\nread_retries = 1",
        catalog='max_age = "24h"\nmax_stale_age = "72h"',
        guards="max_zeroed_share = 1.0\nmax_units_drop_share = 1.0\nread_back = false",
    )
    state, _ = run(config)
    assert state.is_completed()
    kept_catalog_age(tmp_path / "state", timedelta(hours=30))  # due for a refresh
    sandbox.add_fault(Fault(method="GET", path="/products", status=503, rate=1.0))
    write_feed(tmp_path / "east.csv", {f"S{i}": i + 10 for i in range(5)})
    state, summary = run(config)
    assert state.is_completed(), summary
    assert any(
        "catalog refresh failed" in n and "used the kept catalog" in n for n in summary.notes
    )
    assert sandbox.quantities() == {pid(f"S{i}"): i + 10 for i in range(5)}

    kept_catalog_age(tmp_path / "state", timedelta(hours=80))  # over the hard limit
    state, error = run(config)
    assert state.is_failed()
    assert isinstance(error, CatalogError)
    assert "over catalog.max_stale_age" in str(error) and "nothing was sent" in str(error)


def test_the_read_back_reads_a_few_pages_a_run_and_rotates(tmp_path, sandbox, write_config):
    sandbox.reset(products=[product(f"R{i:02d}") for i in range(40)])
    write_feed(tmp_path / "east.csv", {f"R{i:02d}": 10 for i in range(40)})
    config = write_config(
        csv_warehouse("east", "east.csv"),
        lightspeed="per_page = 10",
        guards="max_zeroed_share = 1.0\nmax_units_drop_share = 1.0\nread_back_pages = 2",
    )
    state, first = run(config)  # refresh: pages 1-4 and the end; read-back: pages 1-2
    assert state.is_completed(), first
    assert "2 page(s), 20 product(s) compared" in first.read_back
    assert "50% of the catalog audited in the last 24 h" in first.read_back

    # someone else raises R35 on the platform (oversell risk), and R05 sells two units
    with httpx.Client(base_url=sandbox.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        body = {"products": [{"id": pid("R35"), "quantity": 99}, {"id": pid("R05"), "quantity": 8}]}
        http.put("/inventory", json=body).raise_for_status()
    mark = len(sandbox.requests())
    state, second = run(config)  # nothing changed: reads pages 3-4
    assert state.is_completed(), second
    reads = [r.query for r in sandbox.requests()[mark:] if r.method == "GET"]
    assert reads == ["page=3&per_page=10", "page=4&per_page=10"]
    assert second.drifted == [f"R35 ({pid('R35')}): pushed 10, platform has 99"]
    assert "100% of the catalog audited" in second.read_back

    mark = len(sandbox.requests())
    state, third = run(config)  # R35 was forgotten, so it is sent again; R05 is left alone
    assert state.is_completed(), third
    assert {i for r in sandbox.requests()[mark:] if r.method == "PUT" for i in r.product_ids} == {
        pid("R35")
    }
    assert sandbox.quantities()[pid("R35")] == 10 and sandbox.quantities()[pid("R05")] == 8
    assert third.drifted == []
