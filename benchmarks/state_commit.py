"""What one request's state commit costs: before SQLAlchemy (raw sqlite3), SQLite now, PostgreSQL.

Usage: python -m benchmarks.state_commit [--rows 250] [--commits 300] [--postgres URL]

Each commit records `rows` products keyed by UUID in one transaction, the way an accepted PUT
is recorded: one row of the log of landed requests (its ids as text, its quantities as int64
bytes). The raw sqlite3 arms are the code of the single-tenant version: before issue 11 (a
connection per commit, synchronous=FULL, an Arrow blob per row) and after it (a connection
kept per thread, synchronous=NORMAL, text and bytes). Then one fold of the log into the
snapshot, for the number of commits made. Medians of wall and CPU time; the arms alternate, so a
busy neighbour slows them alike. Without --postgres a throwaway server is started (tests/support/postgres.py).
"""

from __future__ import annotations

import argparse
import io
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from benchmarks.machine import load_average
from benchmarks.processes import ROOT

RAW_LOG_ROW = "INSERT INTO pushed_log (run, at, forgotten, frame) VALUES (?, ?, 0, ?)"
RAW_TEXT_LOG_ROW = (
    "INSERT INTO pushed_log (run, at, products, ids, quantities) VALUES (?, ?, ?, ?, ?)"
)


def raw_sqlite_arm(folder: Path) -> Callable[[pl.DataFrame], None]:
    """The single-tenant version's commit before issue 11: a fresh connection, an Arrow blob."""
    path = folder / "raw.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE pushed_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL, "
            "at TEXT NOT NULL, forgotten INTEGER NOT NULL, frame BLOB NOT NULL)"
        )
    keeper = sqlite3.connect(path)  # as the run lock kept one open

    def commit(landed: pl.DataFrame) -> None:
        buffer = io.BytesIO()
        landed.select("id", "quantity").write_ipc(buffer, compression="lz4")
        now = datetime.now(UTC).isoformat(timespec="seconds")
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(RAW_LOG_ROW, ("bench", now, buffer.getvalue()))
        finally:
            db.close()

    commit.keeper = keeper  # type: ignore[attr-defined]
    return commit


def raw_sqlite_text_arm(folder: Path) -> Callable[[pl.DataFrame], None]:
    """The single-tenant version's commit after issue 11: one connection, NORMAL, text and bytes."""
    path = folder / "raw-text.sqlite3"
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE pushed_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL, "
        "at TEXT NOT NULL, products INTEGER NOT NULL, ids TEXT NOT NULL, quantities BLOB)"
    )

    def commit(landed: pl.DataFrame) -> None:
        ids = landed["id"].str.join("\n").item()
        quantities = landed["quantity"].cast(pl.Int64).to_numpy().astype("<i8").tobytes()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        db.execute(RAW_TEXT_LOG_ROW, ("bench", now, landed.height, ids, quantities))

    commit.keeper = db  # type: ignore[attr-defined]
    return commit


def measure(rows: int, commits: int, arms: dict[str, Callable[[pl.DataFrame], None]]) -> dict:
    """Median wall and CPU milliseconds per commit, per arm."""
    wall: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(commits):
        chunk = pl.DataFrame(
            {"id": [str(uuid.uuid4()) for _ in range(rows)], "quantity": list(range(rows))}
        )
        for name, commit in arms.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            commit(chunk)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu_started)
    return {
        name: (statistics.median(wall[name]) * 1000, statistics.median(cpu[name]) * 1000)
        for name in arms
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=250)
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--postgres", help="a PostgreSQL URL to measure against")
    args = parser.parse_args(argv)
    from tasks.state.location import StateLocation
    from tasks.state.store import StateStore

    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = args.postgres
        if url is None:
            sys.path.insert(0, str(ROOT / "tests" / "support"))
            from postgres import PostgresServer  # type: ignore[import-not-found]

            server = PostgresServer().start()
            stack.callback(server.stop)
            url = server.create_database("bench")
        lite = StateStore(StateLocation.of(folder / "now"), "bench")
        shared = StateStore(StateLocation(url, "bench"))
        stack.enter_context(lite.exclusive("bench"))  # as in a run: the lock is held
        stack.enter_context(shared.exclusive("bench"))
        arms = {
            "sqlite3, single-tenant, before issue 11": raw_sqlite_arm(folder),
            "sqlite3, single-tenant, issue 11": raw_sqlite_text_arm(folder),
            "StateStore on SQLite (SQLAlchemy Core)": lambda f: lite.commit(f, "bench"),
            "StateStore on PostgreSQL": lambda f: shared.commit(f, "bench"),
        }
        load = load_average()
        figures = measure(args.rows, args.commits, arms)
        folds = {}
        for name, store in (("SQLite", lite), ("PostgreSQL", shared)):
            started = time.perf_counter()
            store.fold_pushed()
            folds[name] = time.perf_counter() - started
    print(f"{args.commits} commits of {args.rows} rows each, medians [load {load}]:")
    for name, (wall, cpu) in figures.items():
        print(f"  {name:<44} {wall:6.2f} ms wall  {cpu:6.2f} ms CPU")
    for name, seconds in folds.items():
        print(f"  fold of {args.commits * args.rows:,} products on {name}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
