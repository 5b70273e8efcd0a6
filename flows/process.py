"""The one call that prepares a process to run syncs: importing the product changes nothing."""

from __future__ import annotations

from flows.allocator import release_freed_memory
from flows.heartbeats import end_runs_without_joining_heartbeats
from tasks.errors import log_sync_errors_without_traceback


def prepare_process(*, preload_validation: bool = False) -> None:
    """Set this process up for sync runs; idempotent, so every entry point may call it.

    - Freed memory goes back to the system (flows/allocator.py): call it before polars loads
      for jemalloc's part to count; later calls set glibc's part only.
    - A `SyncError` is logged as its message, without a traceback (tasks/errors.py).
    - A run ends without waiting out the heartbeat thread's sleep (flows/heartbeats.py).
    - `preload_validation`: start importing Great Expectations on the other core now
      (tasks/checks/validation_process.py), for a process that is about to run a flow.
    """
    release_freed_memory()
    log_sync_errors_without_traceback()
    end_runs_without_joining_heartbeats()
    if preload_validation:
        from tasks.checks.suites import preload  # after the allocator's settings

        preload()
