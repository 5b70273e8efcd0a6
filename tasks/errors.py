"""The family of failures the sync explains itself, and the log filter that keeps them traceback-free.

Prefect logs every exception that ends a task or flow run with its traceback. A `SyncError`
is an expected outcome (a feed that cannot be read, a refused token, a busy state) whose
message says what happened and what to do; its traceback would only read as a crash. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging

# The loggers Prefect's engines write run logs to; the UI shows what reaches them.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class SyncError(Exception):
    """An expected failure: the run ends Failed with this message, and no traceback."""


class TracebackFreeSyncErrors(logging.Filter):
    """Log a SyncError as its message: no traceback, no repr, and once per logger.

    Once, because Prefect logs a flow's exception when the flow ends and again when the engine
    re-raises it in a deployment run; the second copy says nothing new.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, SyncError):
            return True
        logged_by: set[str] = error.__dict__.setdefault("_logged_by", set())
        if record.name in logged_by:
            return False
        logged_by.add(record.name)
        message, text = record.getMessage(), str(error)
        record.msg = message.replace(repr(error), text) if repr(error) in message else text
        record.args = None
        record.exc_info = record.exc_text = None
        return True


def log_sync_errors_without_traceback() -> None:
    """Install the filter on Prefect's run loggers (once per process; harmless to repeat)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TracebackFreeSyncErrors) for f in logger.filters):
            logger.addFilter(TracebackFreeSyncErrors())
