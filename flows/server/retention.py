"""What a Prefect server keeps: the vacuum settings make run's server starts with, and what any
server's own settings say, for `inventory-sync deploy` to tell."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

DAY_SECONDS = 86_400
FLOW_RUN_RETENTION_DAYS = 30  # flow runs, with their task runs, logs and artifacts
EVENT_RETENTION_DAYS = 7  # Prefect's own default, said out loud

# The Prefect server settings that turn its vacuum service on for flow runs as well as events.
# `make run` starts its server with these unless the environment sets them already; the docs
# (docs/operations.md) give the same lines for a server the user runs.
VACUUM_ENABLED_ENV = "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"
FLOW_RUN_RETENTION_ENV = "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"
EVENT_RETENTION_ENV = "PREFECT_SERVER_EVENTS_RETENTION_PERIOD"
VACUUM_LOOP_ENV = "PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS"
SERVER_RETENTION_ENV = {  # ISO 8601 durations: Prefect reads the events one as a time otherwise
    VACUUM_ENABLED_ENV: "events,flow_runs",
    FLOW_RUN_RETENTION_ENV: f"P{FLOW_RUN_RETENTION_DAYS}D",
    EVENT_RETENTION_ENV: f"P{EVENT_RETENTION_DAYS}D",
}


def server_retention_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The vacuum settings for a server this project starts; the user's own values win."""
    return {name: environ.get(name, default) for name, default in SERVER_RETENTION_ENV.items()}


@dataclass(frozen=True)
class ServerRetention:
    """What a Prefect server's vacuum deletes, read from its own settings."""

    enabled: frozenset[str]
    flow_runs: timedelta
    events: timedelta

    @property
    def keeps_flow_runs_forever(self) -> bool:
        return "flow_runs" not in self.enabled

    def describe(self) -> str:
        if self.keeps_flow_runs_forever:
            return (
                "off for flow runs: the server keeps every run, its task runs, logs and "
                f"artifacts (events: {_days(self.events)}). Start it with "
                f"{VACUUM_ENABLED_ENV}=events,flow_runs and {FLOW_RUN_RETENTION_ENV}="
                f"P{FLOW_RUN_RETENTION_DAYS}D ({FLOW_RUN_RETENTION_DAYS} days); "
                "see docs/operations.md"
            )
        return f"flow runs kept {_days(self.flow_runs)}, events {_days(self.events)}"


def read_server_retention(server_settings: Mapping[str, Any]) -> ServerRetention:
    """The vacuum's settings from a server's GET /admin/settings answer."""
    server = server_settings.get("server") or {}
    vacuum = (server.get("services") or {}).get("db_vacuum") or {}
    enabled = vacuum.get("enabled", ["events"])
    if isinstance(enabled, bool):  # Prefect's older spelling: true means every kind
        enabled = ["events", "flow_runs"] if enabled else ["events"]
    return ServerRetention(
        enabled=frozenset(enabled or ()),
        flow_runs=_seconds(vacuum.get("retention_period"), 90 * DAY_SECONDS),
        events=_seconds((server.get("events") or {}).get("retention_period"), 7 * DAY_SECONDS),
    )


def _seconds(value: Any, default: float) -> timedelta:
    """A duration as the settings endpoint gives it: seconds, or an ISO 8601 "P30D"/"PT3600S"."""
    if value is None:
        return timedelta(seconds=default)
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    from pydantic import TypeAdapter

    return TypeAdapter(timedelta).validate_python(value)


def _days(period: timedelta) -> str:
    days = period / timedelta(days=1)
    return f"{days:g} days" if days >= 1 else f"{period.total_seconds():g} s"


def describe_server_retention(client: Any) -> str:
    """What a server's vacuum keeps, for `inventory-sync deploy` to say; a Prefect client."""
    try:
        response = client.request("GET", "/admin/settings")
        response.raise_for_status()
        return read_server_retention(response.json()).describe()
    except Exception as exc:  # Prefect Cloud has no such endpoint: it keeps runs by its plan
        return f"unknown (the server's settings cannot be read: {type(exc).__name__})"
