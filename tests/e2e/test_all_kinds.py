"""One run over a warehouse of every kind, each against a real server, through the whole flow."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import polars as pl
import psycopg
import pytest
from builders import csv_warehouse, pid, product
from sftp_server import PASSWORD, PASSWORD_USER, SftpServer
from wms_server import API_KEY, WmsServer

from flows.sync import inventory_sync
from tasks.config.errors import ConfigError

pytestmark = pytest.mark.usefixtures("prefect_api", "token_env")

PG_URL_ENV, SFTP_PASSWORD_ENV, SQLITE_URL_ENV = "PG_STOCK_URL", "DROP_SFTP_PASSWORD", "LITE_URL"


def config(sftp: SftpServer, wms: WmsServer, tmp_path: Path) -> str:
    known_hosts = sftp.known_hosts(tmp_path / "known_hosts")
    return (
        csv_warehouse("east", "east.csv")
        + f"""
[[warehouses]]
name = "north"
kind = "parquet"
path = "north.parquet"
sku_column = "code"
quantity_column = "on_hand"

[[warehouses]]
name = "drop"
kind = "sftp"
host = "127.0.0.1"
port = {sftp.port}
user = "{PASSWORD_USER}"
password = {{ env = "{SFTP_PASSWORD_ENV}" }}
known_hosts = "{known_hosts.name}"
path = "/outbound/stock-*.csv"
sku_column = "sku"
quantity_column = "qty"
delimiter = ";"
retry_backoff_seconds = 0

[[warehouses]]
name = "wms"
kind = "http"
base_url = "{wms.url}"
path = "stock/cursor"
auth_header = "X-Api-Key"
auth_value = {{ secret = "all-kinds-wms-key" }}
records_path = "items"
pagination = "cursor"
cursor_path = "meta.next_cursor"
sku_column = "item.sku"
quantity_column = "stock.available"
retry_backoff_seconds = 0

[[warehouses]]
name = "pg"
kind = "sql"
url = {{ env = "{PG_URL_ENV}" }}
query = "SELECT sku, qty FROM stock ORDER BY sku"
sku_column = "sku"
quantity_column = "qty"
retry_backoff_seconds = 0

[[warehouses]]
name = "lite"
kind = "sql"
url = {{ env = "{SQLITE_URL_ENV}" }}
query = "SELECT code, SUM(n) AS total FROM bins GROUP BY code"
sku_column = "code"
quantity_column = "total"
safety_stock = 1
"""
    )


@pytest.fixture
def servers(tmp_path, postgres, monkeypatch):
    """Every source, filled with stock for products A..F: files, SFTP, WMS, PostgreSQL, SQLite."""
    from prefect.blocks.system import Secret

    (tmp_path / "east.csv").write_text("sku,qty\nA,1\nB,1\n")
    pl.DataFrame({"code": ["A", "C"], "on_hand": [2, 2]}).write_parquet(tmp_path / "north.parquet")
    root = tmp_path / "sftp-root"
    (root / "outbound").mkdir(parents=True)
    (root / "outbound" / "stock-1.csv").write_text("sku;qty\nA;3\nD;3\n")
    records = [
        {"item": {"sku": "A"}, "stock": {"available": 4}},
        {"item": {"sku": "E"}, "stock": {"available": 4.0}},
        {"item": {"sku": "B"}, "stock": {"available": 4}},
    ]
    pg_url = postgres.create_database(f"all_kinds_{time.time_ns()}")
    with psycopg.connect(pg_url) as db:
        db.execute("CREATE TABLE stock (sku text, qty integer)")
        db.execute("INSERT INTO stock VALUES ('A', 5), ('F', 5), ('C', NULL)")  # C is held
    with sqlite3.connect(tmp_path / "lite.sqlite") as lite:
        lite.execute("CREATE TABLE bins (code TEXT, n INTEGER)")
        lite.executemany("INSERT INTO bins VALUES (?, ?)", [("A", 3), ("A", 3), ("F", 2)])
    lite.close()
    Secret(value=API_KEY).save("all-kinds-wms-key", overwrite=True)
    monkeypatch.setenv(SFTP_PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(PG_URL_ENV, pg_url.replace("postgres@", "postgres:pg-secret-pw@"))
    monkeypatch.setenv(SQLITE_URL_ENV, f"sqlite:///{tmp_path / 'lite.sqlite'}")
    with SftpServer(root) as sftp, WmsServer(records, page_size=2) as wms:
        yield sftp, wms


def test_a_warehouse_of_every_kind_syncs_in_one_run(tmp_path, sandbox, write_config, servers):
    sftp, wms = servers
    sandbox.reset(products=[product(s, quantity=9 if s == "C" else 0) for s in "ABCDEFG"])
    path = write_config(config(sftp, wms, tmp_path), lightspeed="chunk_size = 3")
    state = inventory_sync(config_path=str(path), return_state=True)
    summary = state.result(raise_on_failure=False)
    assert state.is_completed(), summary

    assert sandbox.quantities() == {
        pid("A"): 1 + 2 + 3 + 4 + 5 + (6 - 1),  # every warehouse lists A; lite holds back 1
        pid("B"): 1 + 4,
        pid("C"): 9,  # held, so left alone: pg has NULL for it
        pid("D"): 3,
        pid("E"): 4,  # "4.0" from the WMS JSON is an integer with a zero fraction
        pid("F"): 5 + (2 - 1),
        pid("G"): 0,  # in no warehouse
    }
    assert summary.rows_flagged == {"missing quantity": 1}

    lines = {w.name: w for w in summary.warehouses}
    assert {name: line.rows for name, line in lines.items()} == {
        "east": 2,
        "north": 2,
        "drop": 2,
        "wms": 3,
        "pg": 3,
        "lite": 2,
    }
    assert lines["drop"].bytes == len("sku;qty\nA;3\nD;3\n")  # the remote file's size
    assert lines["drop"].source == f"sftp://alice@127.0.0.1:{sftp.port}/outbound/stock-1.csv"
    assert lines["wms"].bytes > 0 and lines["pg"].bytes == len("A5F5C")
    assert "pg-secret-pw" not in lines["pg"].source and ":***@" in lines["pg"].source

    _assert_secrets_stay_secret(state.state_details.flow_run_id)


def _assert_secrets_stay_secret(flow_run_id) -> None:
    """One task run per warehouse, all completed; no secret in runs, states or logs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        deadline, logs = time.monotonic() + 20, []
        while time.monotonic() < deadline and not any("'lite'" in log.message for log in logs):
            time.sleep(0.3)  # logs are shipped in batches
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        # task-run states arrive as events too, after the flow returned: read them last
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    extracts = {t.name: t for t in task_runs if t.name.startswith("extract ")}
    assert set(extracts) == {f"extract {n}" for n in ("east", "north", "drop", "wms", "pg", "lite")}
    assert all(t.state.is_completed() for t in extracts.values())
    recorded = json.dumps(
        [flow_run.model_dump(mode="json")]
        + [t.model_dump(mode="json") for t in task_runs]
        + [log.message for log in logs]
    )
    assert any("warehouse 'drop': 2 rows, 16 bytes" in log.message for log in logs)
    for secret in (PASSWORD, API_KEY, "pg-secret-pw"):
        assert secret not in recorded


def test_a_missing_secret_stops_the_run_before_anything_is_read(
    tmp_path, sandbox, write_config, servers, monkeypatch
):
    sftp, wms = servers
    monkeypatch.delenv(SFTP_PASSWORD_ENV)
    monkeypatch.delenv(PG_URL_ENV)
    path = write_config(config(sftp, wms, tmp_path))
    state = inventory_sync(config_path=str(path), return_state=True)
    error = state.result(raise_on_failure=False)
    assert state.is_failed() and isinstance(error, ConfigError)
    assert str(error) == (
        "cannot read warehouse secret(s):\n"
        f'  - warehouses (name = "drop").password: environment variable {SFTP_PASSWORD_ENV} '
        "is not set\n"
        f'  - warehouses (name = "pg").url: environment variable {PG_URL_ENV} is not set'
    )
    assert wms.requests == [] and sftp.logins == []
