"""What a Prefect server keeps: the vacuum settings make run starts with, and what deploy says."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flows.server.retention import (
    FLOW_RUN_RETENTION_ENV,
    SERVER_RETENTION_ENV,
    VACUUM_ENABLED_ENV,
    read_server_retention,
    server_retention_env,
)

pytestmark = pytest.mark.fast


def test_a_server_this_project_starts_deletes_flow_runs_after_thirty_days():
    env = server_retention_env({})
    assert env[VACUUM_ENABLED_ENV] == "events,flow_runs"
    assert env[FLOW_RUN_RETENTION_ENV] == "P30D"
    assert set(env) == set(SERVER_RETENTION_ENV)


def test_the_users_own_vacuum_settings_win():
    env = server_retention_env({FLOW_RUN_RETENTION_ENV: "P7D", "OTHER": "x"})
    assert env[FLOW_RUN_RETENTION_ENV] == "P7D"
    assert "OTHER" not in env


# GET /admin/settings, as Prefect 3.9 answers it (trimmed to what is read)
SERVER_SETTINGS = {
    "server": {
        "services": {"db_vacuum": {"enabled": ["events", "flow_runs"], "retention_period": "P30D"}},
        "events": {"retention_period": "P7D"},
    }
}


def test_a_servers_retention_is_read_from_its_settings():
    retention = read_server_retention(SERVER_SETTINGS)
    assert not retention.keeps_flow_runs_forever
    assert (retention.flow_runs, retention.events) == (timedelta(days=30), timedelta(days=7))
    assert retention.describe() == "flow runs kept 30 days, events 7 days"


def test_a_server_on_prefects_defaults_is_told_how_to_bound_itself():
    retention = read_server_retention(
        {"server": {"services": {"db_vacuum": {"enabled": ["events"]}}}}
    )
    assert retention.keeps_flow_runs_forever
    text = retention.describe()
    assert "keeps every run" in text
    assert f"{VACUUM_ENABLED_ENV}=events,flow_runs" in text
    assert "docs/operations.md" in text
