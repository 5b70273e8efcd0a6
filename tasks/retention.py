"""What bounds the stores a year of runs leaves behind: the Prefect server's vacuum, old reports."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DAY_SECONDS = 86_400
FLOW_RUN_RETENTION_DAYS = 30  # flow runs, with their task runs, logs and artifacts
EVENT_RETENTION_DAYS = 7  # Prefect's own default, said out loud

# The Prefect server settings that turn its vacuum service on for flow runs as well as events.
# `make run` starts its server with these unless the environment sets them already; the docs
# (docs/retention.md) give the same lines for a server the user runs.
VACUUM_ENABLED_ENV = "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"
FLOW_RUN_RETENTION_ENV = "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"
EVENT_RETENTION_ENV = "PREFECT_SERVER_EVENTS_RETENTION_PERIOD"
VACUUM_LOOP_ENV = "PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS"
SERVER_RETENTION_ENV = {  # ISO 8601 durations: Prefect reads the events one as a time otherwise
    VACUUM_ENABLED_ENV: "events,flow_runs",
    FLOW_RUN_RETENTION_ENV: f"P{FLOW_RUN_RETENTION_DAYS}D",
    EVENT_RETENTION_ENV: f"P{EVENT_RETENTION_DAYS}D",
}

# what write_files names a report: <UTC stamp>-<run name>-<what>.csv
REPORT_NAME = re.compile(r"^(\d{8}T\d{6}Z)-.+-(quarantine|not-landed|dry-run-diff)\.csv$")


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
                "see docs/retention.md"
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


def delete_old_reports(folder: str | Path, keep_days: float, now: datetime) -> list[Path]:
    """Delete the report CSVs written more than keep_days before now; return what was deleted.

    Only files named the way runs name them count, by the UTC time in their name, so a file a
    user put in the folder, or a copy whose mtime changed, is never touched or misjudged.
    """
    base = Path(folder)
    if not base.is_dir():
        return []
    cutoff = now.astimezone(UTC) - timedelta(days=keep_days)
    deleted = []
    for path in sorted(base.iterdir()):
        match = REPORT_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        written = datetime.strptime(match[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if written < cutoff:
            path.unlink(missing_ok=True)  # another run may have just deleted it
            deleted.append(path)
    return deleted


def prune_reports(folder: str | Path, keep_days: float) -> list[Path]:
    """At the end of a run: delete the reports past their keep_days, and say how many."""
    from prefect import get_run_logger

    deleted = delete_old_reports(folder, keep_days, datetime.now(UTC))
    if deleted:
        get_run_logger().info(
            "deleted %d report file(s) older than %g days from %s", len(deleted), keep_days, folder
        )
    return deleted


def describe_server_retention(client: Any) -> str:
    """What a server's vacuum keeps, for `inventory-sync deploy` to say; a Prefect client."""
    try:
        response = client.request("GET", "/admin/settings")
        response.raise_for_status()
        return read_server_retention(response.json()).describe()
    except Exception as exc:  # Prefect Cloud has no such endpoint: it keeps runs by its plan
        return f"unknown (the server's settings cannot be read: {type(exc).__name__})"
