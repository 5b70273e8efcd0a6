"""The run lock on a state folder: one sync of a state at a time, whoever starts it.

An flock on `run.lock`, so it goes with the process (a SIGKILLed run never leaves it stuck).
Light on purpose (no polars, no Prefect): the CLI takes it before it loads anything heavy.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from tasks.errors import SyncError


class StateBusy(SyncError):
    """Another run holds the state store's lock."""


LOCK_FILE = "run.lock"
_handed_over: dict[Path, TextIO] = {}  # run locks taken for the next run in this process
_handed_over_guard = threading.Lock()


@contextmanager
def run_lock(folder: str | Path, holder: str) -> Iterator[TextIO]:
    """Take a state folder's run lock (an flock, released when the process dies) or raise StateBusy."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder_now = handle.read().strip() or "another process"
            raise StateBusy(
                f"state {folder} is in use by {holder_now}: another run of this config is in "
                "progress; nothing was done (two syncs of one state never overlap)"
            ) from None
        say_who_holds(handle, holder)
        yield handle
    finally:
        handle.close()  # closing releases the lock


@contextmanager
def lock_for_next_run(folder: str | Path, holder: str) -> Iterator[None]:
    """Take the run lock now and hand it to the next run of this state in this process.

    The CLI does this before it starts Prefect, so a busy state is refused before anything
    starts, and no other run can slip in between. A deployment run takes the lock itself.
    """
    key = Path(folder).resolve()
    with run_lock(folder, holder) as handle:
        with _handed_over_guard:
            _handed_over[key] = handle
        try:
            yield
        finally:
            with _handed_over_guard:
                _handed_over.pop(key, None)


def adopt(folder: Path) -> TextIO | None:
    """The lock handed over for this folder, if any; only one run can adopt it."""
    with _handed_over_guard:
        return _handed_over.pop(folder.resolve(), None)


def say_who_holds(handle: TextIO, holder: str) -> None:
    """Write who holds the lock into the lock file, for the message a refused run shows."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"{holder} (pid {os.getpid()}, since {_now()})")
    handle.flush()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
