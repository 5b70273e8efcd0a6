"""One SQLAlchemy engine per state database and process, and the schema made ready once.

SQLite: WAL with synchronous=NORMAL, pooled connections (a fresh one per commit adds its own
CPU to each, and a load commits many times a second), and BEGIN IMMEDIATE for writes, so two
processes' writers queue on the busy timeout instead of failing. Within a process, writers
queue on a lock instead (`sqlite_write_lock`): SQLite's busy handler sleeps 1 ms and more
between tries, which a load's request threads, committing every few milliseconds, would pay.
The engine is made again when the database file is not the one it was made for (the state
folder was deleted or replaced): a pooled connection would go on writing to the old file.

In WAL mode NORMAL keeps every commit atomic, and a commit survives the process being killed
(kill -9 included): only an OS crash or a power cut can lose the last few, and then the next
run sends those products again, harmless since quantities are absolute. FULL, an fsync per
commit, would add a disk flush to every request. PostgreSQL: psycopg 3, a small pool checked
before use.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

from tasks.state.location import POSTGRESQL, StateLocation
from tasks.state.schema import metadata

SQLITE_BUSY_TIMEOUT_SECONDS = 60
# the WAL is cut back to this after each checkpoint that resets it; a run's end empties it
WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024
CHECKPOINT_BUSY_MS = 2000  # a run's end waits this long for another process's reader or writer
READ = "inventory_sync_read"  # execution option: a read-only SQLite transaction (BEGIN DEFERRED)
SCHEMA_LOCK_KEY = 0x1A7E_0013_5C4E_0000  # advisory lock serialising CREATE TABLE on PostgreSQL

# database key -> (engine, the file it was made ready for: see _file_marker)
_engines: dict[tuple[str, str], tuple[Engine, object]] = {}
_write_locks: dict[str, threading.RLock] = {}
_lock = threading.Lock()


def engine_for(location: StateLocation) -> Engine:
    """The process's engine for this database, its schema ready (and a pre-tenant SQLite upgraded)."""
    password = location.password.get_secret_value() if location.password else ""
    key = (location.url, password)
    with _lock:
        engine, marker = _engines.get(key, (None, None))
        if engine is not None and marker != _file_marker(location):
            engine.dispose()  # the file was deleted or replaced since
            engine = None
        if engine is None:
            engine = _create(location)
            _prepare(engine, location)
            _engines[key] = (engine, _file_marker(location))
    return engine


def sqlite_write_lock(location: StateLocation) -> threading.RLock:
    """The lock this process's writers to this SQLite file take before BEGIN IMMEDIATE."""
    with _lock:
        return _write_locks.setdefault(location.url, threading.RLock())


def checkpoint_wal(location: StateLocation) -> bool:
    """SQLite: copy the WAL into the database and empty it (TRUNCATE); False if it stays.

    A run's process may leave without closing its connections (the CLI leaves through
    os._exit), and then nothing else checkpoints: the WAL kept a whole run's writes. Another
    process's reader or writer makes this give up after CHECKPOINT_BUSY_MS, harmlessly: that
    process's own run ends with a checkpoint too, and journal_size_limit caps the file.
    """
    if location.dialect == POSTGRESQL:
        return True
    raw = engine_for(location).raw_connection()
    try:
        connection = raw.driver_connection
        assert connection is not None  # a pooled connection that is open
        connection.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
        try:
            busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.OperationalError:  # locked past the wait: left to the next run's end
            busy = 1
        finally:
            connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
    finally:
        raw.close()  # back to the pool
    return not busy


def _create(location: StateLocation) -> Engine:
    if location.dialect == POSTGRESQL:
        return create_engine(
            location.engine_url(),
            pool_pre_ping=True,  # a worker outlives a database restart
            pool_size=4,
            max_overflow=32,
            connect_args={"connect_timeout": 10, "application_name": "inventory-sync"},
        )
    engine = create_engine(
        location.engine_url(),
        pool_size=8,  # a load's request threads, the run's reader and its WAL keeper
        max_overflow=16,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by _sqlite_begin
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # see the module's docstring
    dbapi_connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")


def _sqlite_begin(connection: Any) -> None:
    read_only = connection.get_execution_options().get(READ, False)
    connection.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")


def _file_marker(location: StateLocation) -> object:
    """What identifies the database file (so a deleted state folder gets a new engine and schema)."""
    if location.dialect == POSTGRESQL:
        return None
    try:
        stat = os.stat(location.sqlite_path)
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


def _prepare(engine: Engine, location: StateLocation) -> None:
    """Create the tables that are missing; move a SQLite state from before tenants into its tenant."""
    if location.dialect == POSTGRESQL:
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            metadata.create_all(connection)
        return
    from tasks.state.legacy import upgrade_legacy  # polars: only when a store is opened

    location.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    with engine.begin() as connection:
        upgrade_legacy(connection, location.tenant, location.sqlite_path.parent / "snapshots")
        metadata.create_all(connection)
