"""`inventory-sync watch` as its own process against a real Prefect server: polls, events, signals.

No worker here: the events themselves are what is checked (the runs they start are in
tests/e2e/test_feed_arrivals.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sftp_server import PASSWORD, PASSWORD_USER, SftpServer
from wms_server import API_KEY, WmsServer

from devstack.processes import descendants, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DEPLOYMENT = "on-feed-arrival"
EAST = "sku,qty\nA,1\n"


@pytest.fixture
def sftp(tmp_path: Path) -> Iterator[SftpServer]:
    (tmp_path / "sftp" / "outbound").mkdir(parents=True)
    with SftpServer(tmp_path / "sftp") as server:
        yield server


@pytest.fixture
def wms() -> Iterator[WmsServer]:
    with WmsServer([{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}], page_size=10) as server:
        yield server


def write_config(tmp_path: Path, sftp: SftpServer, wms: WmsServer) -> Path:
    config = tmp_path / "sync.toml"
    config.write_text(
        f"""
[lightspeed]
base_url = "http://127.0.0.1:1"

[watch]
settle = "0.3s"
debounce = "3s"

[[warehouses]]
name = "east"
kind = "csv"
path = "feeds/east-*.csv"
sku_column = "sku"
quantity_column = "qty"

[[warehouses]]
name = "drop"
kind = "sftp"
host = "127.0.0.1"
port = {sftp.port}
user = "{PASSWORD_USER}"
password = {{ env = "DROP_PASSWORD" }}
host_key = "{sftp.host_key_line}"
path = "/outbound/stock-*.csv"
sku_column = "sku"
quantity_column = "qty"
poll_interval = "0.5s"

[[warehouses]]
name = "wms"
kind = "http"
base_url = "{wms.url}"
path = "stock/paged"
auth_header = "X-Api-Key"
auth_value = {{ env = "WMS_KEY" }}
records_path = "data.items"
pagination = "page"
sku_column = "sku"
quantity_column = "qty"
poll_interval = "0.5s"
""",
        encoding="utf-8",
    )
    return config


def start_watcher(config: Path, api: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "DROP_PASSWORD": PASSWORD,
        "WMS_KEY": API_KEY,
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "watch", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(text: str, log: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def arrival_events(api: str, since: datetime) -> list[dict[str, Any]]:
    body = {
        "filter": {
            "event": {"name": ["inventory-sync.feed.arrived"]},
            "occurred": {"since": since.isoformat()},
        },
        "limit": 50,
    }
    return list(httpx.post(f"{api}/events/filter", json=body, timeout=10).json()["events"])


def create_deployment(api: str, config: Path) -> None:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api) as client:
        flow_id = client.create_flow_from_name("inventory-sync")
        client.create_deployment(
            flow_id, DEPLOYMENT, parameters={"config_path": str(config)}, entrypoint="x.py:f"
        )


def test_without_a_server_or_a_deployment_the_watcher_says_what_to_do(tmp_path, sftp, wms):
    config = write_config(tmp_path, sftp, wms)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    command = [sys.executable, "-m", "flows.cli", "watch", "--config", str(config)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "PREFECT_API_URL is not set" in result.stderr


def test_an_unreachable_server_is_named_and_the_watcher_exits(tmp_path, sftp, wms):
    config = write_config(tmp_path, sftp, wms)
    api = f"http://127.0.0.1:{free_port()}/api"
    command = [sys.executable, "-m", "flows.cli", "watch", "--config", str(config)]
    env = {**os.environ, "PREFECT_API_URL": api, "DROP_PASSWORD": PASSWORD, "WMS_KEY": API_KEY}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "cannot reach the Prefect server" in result.stderr


def test_polled_and_watched_feeds_become_one_event_and_sigterm_stops_it(
    tmp_path, sftp, wms, prefect_api
):
    config = write_config(tmp_path, sftp, wms)
    log = tmp_path / "watcher.log"
    missing = start_watcher(config, prefect_api, log)
    assert missing.wait(60) == 1
    assert "no deployment inventory-sync/on-feed-arrival" in log.read_text()

    create_deployment(prefect_api, config)
    since = datetime.now(UTC)
    watcher = start_watcher(config, prefect_api, log)
    try:
        wait_for("a change is an arrival after", log, watcher)
        assert "polling drop (sftp) every 0.5 s" in log.read_text()
        (tmp_path / "feeds").mkdir(exist_ok=True)
        (tmp_path / "feeds" / "east-1.csv").write_text(EAST)
        (sftp.root / "outbound" / "stock-1.csv").write_text("sku,qty\nA,2\n")
        wms.records[0]["qty"] = 5
        deadline = time.monotonic() + 60
        while not (events := arrival_events(prefect_api, since)):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        time.sleep(4)  # a second event would come within the window
        events = arrival_events(prefect_api, since)
        family = descendants(watcher.pid)
    finally:
        watcher.send_signal(signal.SIGTERM)
        code = watcher.wait(30)

    assert [e["payload"]["warehouses"] for e in events] == [["drop", "east", "wms"]]
    fingerprints = {
        r["prefect.resource.name"]: r["inventory-sync.fingerprint"] for r in events[0]["related"]
    }
    assert fingerprints["wms"].startswith("sha256:")
    assert fingerprints["east"].startswith(f"{len(EAST)}:")
    assert code == 0
    assert log.read_text().rstrip().endswith("inventory-sync.watch: stopped")
    assert family == set() or all(not Path(f"/proc/{p.pid}").exists() for p in family)
    seen = (tmp_path / "state" / "watcher-fingerprints.json").read_text()
    assert all(name in seen for name in ("drop", "east", "wms"))
