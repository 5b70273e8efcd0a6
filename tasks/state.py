"""What the sync remembers between runs: SQLite for pushed quantities and feed ages, Parquet snapshots.

SQLite in WAL mode with synchronous=FULL makes each commit atomic and durable: a process
killed at any moment leaves either the whole chunk recorded or none of it. Snapshots are
written to a temporary file, fsynced, then renamed over the old one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from tasks.sources.feed import Feed

SCHEMA = """
CREATE TABLE IF NOT EXISTS pushed (
    product_id TEXT PRIMARY KEY,
    quantity INTEGER NOT NULL,
    pushed_at TEXT NOT NULL,
    run TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feeds (
    warehouse TEXT PRIMARY KEY,
    modified_at TEXT NOT NULL,
    source TEXT NOT NULL,
    run TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
"""
LAST_PUSHED_SCHEMA = {"id": pl.String, "last_quantity": pl.Int64}


class StateBusy(Exception):
    """Another run holds the state store's lock."""


@dataclass(frozen=True)
class FeedMark:
    """The feed a warehouse supplied to the last successful run."""

    warehouse: str
    modified_at: datetime
    source: str
    run: str


class StateStore:
    """The last quantity pushed per product and the last good feed per warehouse, in one folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "state.sqlite3"
        self.snapshots = self.folder / "snapshots"
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def exclusive(self, run: str) -> Iterator[StateStore]:
        """Hold the store's lock for a whole run; a second run on the same store fails at once."""
        lock_path = self.folder / "run.lock"
        handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole run
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise StateBusy(
                    f"state {self.folder} is in use by {holder}; two syncs of the same state "
                    "must not overlap (this run sent nothing)"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"run {run} (pid {os.getpid()}, since {_now()})")
            handle.flush()
            # While one connection stays open, closing the others does not checkpoint the WAL
            # (with its fsyncs): each chunk's commit costs about half as much. Commits are as
            # durable as before; the WAL is checkpointed when this one closes.
            with closing(sqlite3.connect(self.path, isolation_level=None)) as keeper:
                keeper.execute("SELECT 1 FROM pushed LIMIT 1").fetchall()
                yield self
        finally:
            handle.close()  # closing releases the lock, as does the process dying

    def last_pushed(self) -> pl.DataFrame:
        """id, last_quantity: every product this store has seen land."""
        with self._connect() as db:
            rows = db.execute("SELECT product_id, quantity FROM pushed").fetchall()
        return pl.DataFrame(rows, schema=LAST_PUSHED_SCHEMA, orient="row")

    def commit(self, landed: pl.DataFrame, run: str) -> None:
        """Record products the API accepted (id, quantity), in one transaction."""
        now = _now()
        ids, quantities = landed["id"].to_list(), landed["quantity"].to_list()
        rows = [(pid, qty, now, run) for pid, qty in zip(ids, quantities, strict=True)]
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO pushed (product_id, quantity, pushed_at, run) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(product_id) DO UPDATE SET quantity = excluded.quantity, "
                "pushed_at = excluded.pushed_at, run = excluded.run",
                rows,
            )
            db.execute("COMMIT")

    def landed_in_run(self, product_ids: Iterable[str], run: str) -> set[str]:
        """Which of these products this run has already recorded as landed."""
        ids = json.dumps(list(product_ids))
        with self._connect() as db:
            rows = db.execute(
                "SELECT product_id FROM pushed WHERE run = ? AND product_id IN "
                "(SELECT value FROM json_each(?))",
                (run, ids),
            ).fetchall()
        return {pid for (pid,) in rows}

    def forget(self, product_ids: Iterable[str]) -> None:
        """Drop what we believe was pushed, so the next run sends these products again."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM pushed WHERE product_id = ?", [(i,) for i in product_ids])
            db.execute("COMMIT")

    def feed_marks(self) -> dict[str, FeedMark]:
        with self._connect() as db:
            rows = db.execute("SELECT warehouse, modified_at, source, run FROM feeds").fetchall()
        return {
            name: FeedMark(name, datetime.fromisoformat(modified), source, run)
            for name, modified, source, run in rows
        }

    def record_good_feed(
        self, warehouse: str, modified_at: datetime, source: str, rows: pl.DataFrame, run: str
    ) -> None:
        """After a successful run: remember the feed's age and keep its rows as the last good one."""
        self._write_snapshot(warehouse, rows)
        with self._connect() as db:
            db.execute(
                "INSERT INTO feeds (warehouse, modified_at, source, run, recorded_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(warehouse) DO UPDATE SET "
                "modified_at = excluded.modified_at, source = excluded.source, "
                "run = excluded.run, recorded_at = excluded.recorded_at",
                (warehouse, modified_at.isoformat(), source, run, _now()),
            )

    def record_good_feeds(self, feeds: Iterable[Feed], run: str) -> None:
        """Remember every feed of a successful run (see record_good_feed)."""
        for feed in feeds:
            self.record_good_feed(feed.warehouse, feed.modified_at, feed.source, feed.rows, run)

    def last_good_rows(self, warehouse: str) -> pl.DataFrame | None:
        path = self._snapshot_path(warehouse)
        return pl.read_parquet(path) if path.exists() else None

    def _snapshot_path(self, warehouse: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", warehouse)[:40]
        digest = hashlib.sha1(warehouse.encode()).hexdigest()[:8]
        return self.snapshots / f"{safe}-{digest}.parquet"

    def _write_snapshot(self, warehouse: str, rows: pl.DataFrame) -> None:
        self.snapshots.mkdir(exist_ok=True)
        final = self._snapshot_path(warehouse)
        temporary = final.with_suffix(".parquet.tmp")
        rows.write_parquet(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        directory = os.open(self.snapshots, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
