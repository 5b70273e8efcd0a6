"""How long a run's report files are kept: those older than report.keep_days are deleted."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

# what write_files names a report: <UTC stamp>-<run name>-<what>.csv
REPORT_NAME = re.compile(r"^(\d{8}T\d{6}Z)-.+-(quarantine|not-landed|dry-run-diff)\.csv$")


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
