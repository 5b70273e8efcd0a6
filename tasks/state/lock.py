"""The run lock on a state: one sync of a tenant's state at a time, whoever starts it, wherever.

SQLite: an flock on `run.lock` beside the database (`run-<tenant>.lock` for another tenant),
so it goes with the process (a SIGKILLed run never leaves it stuck). PostgreSQL: a session
advisory lock on a connection kept for the whole run; the server drops it when that session
ends, so a run killed on one machine never blocks another, and TCP keepalives on the session
let the server notice a machine that vanished without closing it (about a minute).
Light on purpose (no polars, no Prefect): the CLI takes it before it loads anything heavy.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tasks.errors import SyncError

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from tasks.state.location import StateLocation


class StateBusy(SyncError):
    """Another run holds the state store's lock (or this run lost it)."""


LOCK_FILE = "run.lock"
KEEPALIVE = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}
BUSY = "another run of this config is in progress; nothing was done (two syncs of one state never overlap)"


class HeldLock:
    """A run lock this process holds; `say` records who holds it, for a refused run's message."""

    def say(self, holder: str) -> None:
        raise NotImplementedError


@dataclass
class FileLock(HeldLock):
    handle: TextIO

    def say(self, holder: str) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{holder} (pid {os.getpid()}, since {_now()})")
        self.handle.flush()


@dataclass
class AdvisoryLock(HeldLock):
    location: StateLocation
    key: int
    backend_pid: int

    def say(self, holder: str) -> None:
        from tasks.state.engines import engine_for
        from tasks.state.schema import run_holders, upsert_rows

        text = f"{holder} (pid {os.getpid()} on {socket.gethostname()}, since {_now()})"
        with engine_for(self.location).begin() as db:
            row = {"tenant": self.location.tenant, "holder": text, "since": _now()}
            upsert_rows(db, run_holders, [row])


_handed_over: dict[Hashable, HeldLock] = {}  # run locks taken for the next run in this process
_advisory: dict[tuple[str, str], AdvisoryLock] = {}  # held now, for check_still_held
_guard = threading.Lock()


def _location(target: Any) -> StateLocation | None:
    return target if hasattr(target, "dialect") else None


def _is_shared(target: Any) -> bool:
    location = _location(target)
    return location is not None and location.dialect == "postgresql"


def lock_file(target: Any) -> Path:
    """The flock file of a state folder, or of a tenant of a SQLite state (beside the database).

    The default tenant keeps the single-tenant version's `run.lock`, so a run of that version
    and one of this one can never overlap on one folder during an upgrade.
    """
    location = _location(target)
    if location is None:
        return Path(target) / LOCK_FILE
    from tasks.state.location import DEFAULT_TENANT

    name = LOCK_FILE if location.tenant == DEFAULT_TENANT else f"run-{location.tenant}.lock"
    return location.sqlite_path.parent / name


def lock_key(target: Any) -> Hashable:
    """What identifies a run lock: its file, or the shared database and tenant."""
    if _is_shared(target):
        return ("postgresql", target.url, target.tenant)
    return lock_file(target).resolve()


@contextmanager
def run_lock(target: Any, holder: str) -> Iterator[HeldLock]:
    """Take a state's run lock (released when the process dies) or raise StateBusy at once."""
    hold = _hold_advisory if _is_shared(target) else _hold_flock
    with hold(target, holder) as held:
        yield held


@contextmanager
def lock_for_next_run(target: Any, holder: str) -> Iterator[None]:
    """Take the run lock now and hand it to the next run of this state in this process.

    The CLI does this before it starts Prefect, so a busy state is refused before anything
    starts, and no other run can slip in between. A deployment run takes the lock itself.
    """
    key = lock_key(target)
    with run_lock(target, holder) as held:
        with _guard:
            _handed_over[key] = held
        try:
            yield
        finally:
            with _guard:
                _handed_over.pop(key, None)


def adopt(target: Any) -> HeldLock | None:
    """The lock handed over for this state, if any; only one run can adopt it."""
    with _guard:
        return _handed_over.pop(lock_key(target), None)


def say_who_holds(held: HeldLock, holder: str) -> None:
    """Record who holds the lock, for the message a refused run shows."""
    held.say(holder)


def check_still_held(connection: Connection, location: StateLocation) -> None:
    """Inside a write transaction: refuse to write if this process's advisory lock was lost.

    Only PostgreSQL can lose it (the lock's session ended, say by a database restart); a run
    that went on writing then could overlap a run that has taken the lock since.
    """
    from sqlalchemy import text

    with _guard:
        held = _advisory.get((location.url, location.tenant))
    if held is None:
        return
    still = connection.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = :pid AND classid = :hi AND objid = :lo AND objsubid = 1)"
        ),
        {"pid": held.backend_pid, "hi": (held.key >> 32) & 0xFFFFFFFF, "lo": held.key & 0xFFFFFFFF},
    ).scalar()
    if not still:
        raise StateBusy(
            f"state {location}: this run lost its run lock (its database session ended); "
            "it stops writing, so it cannot overlap a run that started since"
        )


def advisory_key(tenant: str) -> int:
    """The tenant's advisory lock key: 64 bits of a hash, signed as PostgreSQL's bigint is."""
    digest = hashlib.sha256(f"inventory-sync run lock {tenant}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _hold_flock(target: Any, holder: str) -> Iterator[HeldLock]:
    path = lock_file(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder_now = handle.read().strip() or "another process"
            raise StateBusy(f"state {path.parent} is in use by {holder_now}: {BUSY}") from None
        held = FileLock(handle)
        held.say(holder)
        yield held
    finally:
        handle.close()  # closing releases the lock


@contextmanager
def _hold_advisory(location: StateLocation, holder: str) -> Iterator[HeldLock]:
    from sqlalchemy import select, text

    from tasks.state.engines import engine_for
    from tasks.state.schema import run_holders

    engine = engine_for(location)
    key = advisory_key(location.tenant)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as session:
        for name, value in KEEPALIVE.items():
            session.exec_driver_sql(f"SET {name} = {int(value)}")
        if not session.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar():
            holder_now = session.execute(
                select(run_holders.c.holder).where(run_holders.c.tenant == location.tenant)
            ).scalar()
            raise StateBusy(f"state {location} is in use by {holder_now or 'another run'}: {BUSY}")
        held = AdvisoryLock(
            location, key, int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
        )
        with _guard:
            _advisory[(location.url, location.tenant)] = held
        try:
            held.say(holder)
            yield held
        finally:
            with _guard:
                _advisory.pop((location.url, location.tenant), None)
            try:
                session.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            except Exception:  # the session is gone, and its lock with it
                session.invalidate()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
