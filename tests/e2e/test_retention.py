"""Retention through real runs: a run deletes old reports; `make run`'s server deletes old runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from builders import csv_warehouse, product

from flows.sync import inventory_sync

pytest_plugins = ["prefect_server"]


def old_report(folder, age: timedelta):
    folder.mkdir(parents=True, exist_ok=True)
    stamp = (datetime.now(UTC) - age).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-an-earlier-run-quarantine.csv"
    path.write_text("vendorSku,reason\nX,unknown\n", encoding="utf-8")
    return path


def test_a_run_deletes_reports_past_keep_days_and_keeps_the_rest(
    prefect_api, token_env, tmp_path, sandbox, write_config
):
    sandbox.reset(products=[product(f"S{i}") for i in range(3)])
    rows = [*(f"S{i},{10 + i}\n" for i in range(3)), "NOT-IN-CATALOG,4\n"]  # one flagged row
    (tmp_path / "east.csv").write_text("sku,qty\n" + "".join(rows), encoding="utf-8")
    config = write_config(csv_warehouse("east", "east.csv"))
    with config.open("a", encoding="utf-8") as file:
        file.write("\n[report]\nkeep_days = 7\n")
    reports = tmp_path / "reports"
    expired = old_report(reports, timedelta(days=7, minutes=1))
    recent = old_report(reports, timedelta(days=6, hours=23))

    state = inventory_sync(config_path=str(config), return_state=True)

    summary = state.result(raise_on_failure=False)
    assert state.is_completed(), summary
    written = summary.files["Quarantine report"]
    assert not expired.exists()
    assert sorted(p.name for p in reports.iterdir()) == sorted(
        [recent.name, written.split("/")[-1]]
    )


def test_make_runs_server_deletes_flow_runs_after_thirty_days_and_events_after_seven(server_stack):
    settings = httpx.get(f"{server_stack.api_url}/admin/settings", timeout=30).json()
    vacuum = settings["server"]["services"]["db_vacuum"]
    assert set(vacuum["enabled"]) >= {"events", "flow_runs"}
    assert vacuum["retention_period"] == "P30D"
    assert settings["server"]["events"]["retention_period"] == "P7D"
    # and `inventory-sync deploy`, which set this server up, said so
    said = server_stack.local.setup_report.lines
    assert "retention on this server: flow runs kept 30 days, events 7 days" in said
