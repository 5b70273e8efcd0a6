"""The watcher's rules without a server: settling, the window, the run gate, probes, its memory."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr
from sftp_server import PASSWORD, PASSWORD_USER, SftpServer
from wms_server import API_KEY, WmsServer

from flows.watcher.batching import Batch, RunGate, RunView, Settling
from flows.watcher.daemon import plan_watch, touched, watch_root
from flows.watcher.event import ARRIVED, arrival_event, feeds_resource_id
from flows.watcher.seen import load_seen, save_seen
from tasks.config.settings import load_settings
from tasks.sources.csv import CsvWarehouse
from tasks.sources.feed import Fingerprint, WarehouseUnreadable
from tasks.sources.http import HttpWarehouse, probe_http
from tasks.sources.local_files import probe_file
from tasks.sources.sftp import SftpWarehouse, probe_sftp

pytestmark = pytest.mark.fast

A = Fingerprint("feeds/east-1.csv", "100:1")
A_GROWN = Fingerprint("feeds/east-1.csv", "200:2")
B = Fingerprint("feeds/east-2.csv", "300:3")


# settling: a change is an arrival only once it has held for `settle` seconds


@pytest.mark.parametrize(
    ("observations", "at", "arrived"),
    [
        pytest.param([(0, A)], 0, {}, id="just seen"),
        pytest.param([(0, A), (1.9, A)], 1.9, {}, id="held 1.9 of 2 s"),
        pytest.param([(0, A), (2.0, A)], 2.0, {"east": A}, id="held 2 s"),
        pytest.param([(0, A), (1.5, A_GROWN), (3.0, A_GROWN)], 3.0, {}, id="grew: clock restarts"),
        pytest.param([(0, A), (1.5, A_GROWN), (3.5, A_GROWN)], 3.5, {"east": A_GROWN}, id="grown"),
        pytest.param([(0, A), (1, None), (2.5, A)], 2.5, {}, id="vanished in between"),
        pytest.param([(0, B), (5, B)], 5, {}, id="the one already known"),
    ],
)
def test_a_change_is_an_arrival_once_it_has_held_for_the_settle_period(observations, at, arrived):
    settling = Settling(settle=2.0, known={"east": B})
    for now, fingerprint in observations:
        settling.observe("east", fingerprint, now)
    assert settling.settled() == arrived


def test_a_settled_arrival_is_known_and_not_reported_twice():
    settling = Settling(settle=1.0, known={})
    settling.observe("east", A, 0)
    settling.observe("east", A, 1)
    assert settling.settled() == {"east": A}
    settling.observe("east", A, 2)
    settling.observe("east", A, 3)
    assert settling.settled() == {} and settling.unsettled() == []


# the window: arrivals within `window` seconds of the first become one batch


def test_arrivals_within_the_window_of_the_first_make_one_batch():
    batch = Batch(window=3.0)
    batch.add({"east": A}, now=10)
    batch.add({"west": B}, now=12)
    assert not batch.ready(12.9)
    batch.add({"east": A_GROWN}, now=12.9)  # a newer feed of the same warehouse replaces it
    assert batch.ready(13.0)
    assert batch.take() == {"east": A_GROWN, "west": B}
    assert not batch.ready(100) and batch.take() == {}


def test_an_empty_arrival_does_not_open_the_window():
    batch = Batch(window=1.0)
    batch.add({}, now=0)
    assert batch.opened is None and not batch.ready(5)


# the gate: no event while a run is in flight or the last event has not become a run yet

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def run(seconds: float, active: bool) -> RunView:
    return RunView(T0 + timedelta(seconds=seconds), active)


@pytest.mark.parametrize(
    ("runs", "open_"),
    [
        pytest.param([], True, id="no run"),
        pytest.param([run(-60, False)], True, id="an old run ended"),
        pytest.param([run(-60, True)], False, id="a run in flight"),
    ],
)
def test_the_gate_is_shut_while_a_run_is_in_flight(runs, open_):
    assert RunGate(grace=60).open(runs, now=0) is open_


def test_after_an_event_the_gate_waits_for_its_run_then_for_the_run_to_end():
    gate = RunGate(grace=60)
    gate.sent(T0, now=100)
    assert not gate.open([run(-300, False)], now=101), "its run has not appeared yet"
    assert not gate.open([run(1, True)], now=103), "its run is in flight"
    assert gate.open([run(1, False)], now=140), "its run ended"
    assert not gate.gave_up


def test_an_event_that_never_becomes_a_run_shuts_the_gate_only_for_the_grace():
    gate = RunGate(grace=60)
    gate.sent(T0, now=100)
    assert not gate.open([], now=159)
    assert gate.open([], now=160) and gate.gave_up


# where to watch, and which warehouse a file-system event concerns


@pytest.mark.parametrize(
    ("pattern", "root"),
    [
        ("/data/feeds/east-*.csv", "/data/feeds"),
        ("/data/feeds/west.csv", "/data/feeds"),
        ("/data/*/east.csv", "/data"),
        ("/data/feeds/**/east-*.csv", "/data/feeds"),
    ],
)
def test_the_watched_folder_is_the_deepest_one_without_a_glob(pattern, root):
    assert watch_root(pattern) == Path(root)


def test_an_event_concerns_the_warehouses_below_its_folder():
    watched = {Path("/data/feeds"): ["east", "west"], Path("/data/north"): ["north"]}
    assert touched(["/data/feeds/x.tmp"], watched) == {"east", "west"}
    assert touched(["/data/north/sub/n.parquet", "/elsewhere/f"], watched) == {"north"}


def test_files_and_globs_are_watched_remote_kinds_polled_and_sql_left_to_the_schedule(tmp_path):
    config = tmp_path / "sync.toml"
    config.write_text(
        """
        [lightspeed]
        base_url = "http://127.0.0.1:1"
        [[warehouses]]
        name = "east"
        kind = "csv"
        path = "feeds/east-*.csv"
        sku_column = "sku"
        quantity_column = "qty"
        [[warehouses]]
        name = "wms"
        kind = "http"
        base_url = "http://127.0.0.1:2"
        sku_column = "sku"
        quantity_column = "qty"
        poll_interval = "30s"
        [[warehouses]]
        name = "south"
        kind = "sql"
        url = { env = "SOUTH_DB_URL" }
        query = "SELECT 1"
        sku_column = "sku"
        quantity_column = "qty"
        [watch]
        settle = "1s"
        debounce = "4s"
        """.replace("\n        ", "\n")
    )
    settings = load_settings(config)
    plan = plan_watch(settings)
    assert [w.name for w in plan.local] == ["east"]
    assert [(w.name, w.poll_interval) for w in plan.polled] == [("wms", timedelta(seconds=30))]
    assert [w.name for w in plan.unwatched] == ["south"]
    assert (settings.watch.settle, settings.watch.debounce) == (
        timedelta(seconds=1),
        timedelta(seconds=4),
    )


# what the watcher remembers between starts


def test_the_fingerprints_sent_survive_a_restart(tmp_path):
    path = tmp_path / "state" / "watcher-fingerprints.json"
    assert load_seen(path) is None, "never ran on this state"
    save_seen(path, {"east": A, "west": B})
    assert load_seen(path) == {"east": A, "west": B}
    assert not list(path.parent.glob("*.tmp")), "written through a temporary file, then renamed"


def test_an_unreadable_memory_makes_every_feed_new_rather_than_stopping(tmp_path):
    path = tmp_path / "watcher-fingerprints.json"
    path.write_text("{not json")
    assert load_seen(path) == {}


# the event


def test_the_event_names_every_warehouse_with_its_fingerprint(tmp_path):
    config = tmp_path / "sync.toml"
    event = arrival_event(config, {"west": B, "east": A})
    assert event.event == ARRIVED
    assert event.resource.id == feeds_resource_id(config)
    assert event.resource["inventory-sync.config"] == str(config.resolve())
    assert event.resource["inventory-sync.warehouses"] == "east,west"
    assert [(r.id, r.role, r["inventory-sync.fingerprint"]) for r in event.related] == [
        ("inventory-sync.warehouse.east", "warehouse", A.token),
        ("inventory-sync.warehouse.west", "warehouse", B.token),
    ]
    assert event.payload["warehouses"] == ["east", "west"]
    assert event.payload["feeds"]["east"] == {"source": A.source, "fingerprint": A.token}
    assert feeds_resource_id(tmp_path / "." / "sync.toml") == event.resource.id


# probes: a cheap look at a feed without reading it


def csv_warehouse(pattern: Path) -> CsvWarehouse:
    return CsvWarehouse.model_validate(
        {
            "name": "east",
            "kind": "csv",
            "path": str(pattern),
            "sku_column": "s",
            "quantity_column": "q",
        }
    )


def test_a_glob_is_probed_by_its_newest_file_name_size_and_time(tmp_path):
    east = csv_warehouse(tmp_path / "east-*.csv")
    with pytest.raises(WarehouseUnreadable, match="no file matches"):
        probe_file(east)
    old = tmp_path / "east-1.csv"
    old.write_text("s,q\nA,1\n")
    os.utime(old, (1_000, 1_000))
    first = probe_file(east)
    assert first == Fingerprint(str(old), f"{old.stat().st_size}:{old.stat().st_mtime_ns}")
    new = tmp_path / "east-2.csv"
    new.write_text("s,q\nA,2\n")
    assert probe_file(east).source == str(new)
    with new.open("a") as grow:
        grow.write("B,3\n")
    assert probe_file(east).token.startswith(f"{new.stat().st_size}:")


@pytest.fixture
def sftp(tmp_path: Path) -> Iterator[SftpServer]:
    (tmp_path / "outbound").mkdir()
    with SftpServer(tmp_path) as server:
        yield server


def test_an_sftp_drop_is_probed_from_the_listing_without_a_download(sftp):
    warehouse = SftpWarehouse.model_validate(
        {
            "name": "east",
            "kind": "sftp",
            "host": "127.0.0.1",
            "port": sftp.port,
            "user": PASSWORD_USER,
            "password": {"env": "UNUSED"},
            "host_key": sftp.host_key_line,
            "path": "/outbound/stock-*.csv",
            "sku_column": "sku",
            "quantity_column": "qty",
        }
    )
    drop = sftp.root / "outbound" / "stock-1.csv"
    drop.write_text("sku,qty\nA,1\n")
    os.utime(drop, (1_700_000_000, 1_700_000_000))
    secrets = {"password": SecretStr(PASSWORD)}
    fingerprint = probe_sftp(warehouse, secrets)
    assert fingerprint.token == f"{drop.stat().st_size}:1700000000"
    assert fingerprint.source.endswith("/outbound/stock-1.csv")
    with drop.open("a") as grow:
        grow.write("B,2\n")
    assert probe_sftp(warehouse, secrets) != fingerprint


def wms_warehouse(url: str, path: str = "stock/paged") -> HttpWarehouse:
    return HttpWarehouse.model_validate(
        {
            "name": "wms",
            "kind": "http",
            "base_url": url,
            "path": path,
            "auth_header": "X-Api-Key",
            "auth_value": {"env": "UNUSED"},
            "records_path": "data.items",
            "pagination": "page",
            "sku_column": "sku",
            "quantity_column": "qty",
        }
    )


def test_a_wms_without_validators_is_probed_by_a_digest_of_its_first_page():
    records = [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}, {"sku": "C", "qty": 3}]
    with WmsServer(records, page_size=2) as wms:
        warehouse = wms_warehouse(wms.url)
        secrets = {"auth_value": SecretStr(API_KEY)}
        first = probe_http(warehouse, secrets)
        assert first.token.startswith("sha256:")
        assert probe_http(warehouse, secrets) == first
        records[0]["qty"] = 5
        assert probe_http(warehouse, secrets) != first
        assert [path for path, _ in wms.requests] == ["/stock/paged?page=1"] * 3, "page 1 only"


class _Validators(BaseHTTPRequestHandler):
    """Answers HEAD with an ETag and counts requests; a GET would cost a whole page."""

    etag = '"v1"'
    seen: ClassVar[list[str]] = []

    def do_HEAD(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(200)
        self.send_header("ETag", self.etag)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_wms_with_an_etag_is_probed_by_head_alone():
    with ThreadingHTTPServer(("127.0.0.1", 0), _Validators) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        warehouse = wms_warehouse(f"http://127.0.0.1:{server.server_address[1]}", "stock")
        try:
            first = probe_http(warehouse, {"auth_value": SecretStr("k")})
            _Validators.etag = '"v2"'
            second = probe_http(warehouse, {"auth_value": SecretStr("k")})
        finally:
            server.shutdown()
    assert (first.token, second.token) == ('etag:"v1"', 'etag:"v2"')
    assert _Validators.seen == ["HEAD /stock?page=1", "HEAD /stock?page=1"]


def test_the_event_payload_is_json(tmp_path):
    event = arrival_event(tmp_path / "c.toml", {"east": A})
    assert json.loads(event.model_dump_json())["payload"]["warehouses"] == ["east"]
