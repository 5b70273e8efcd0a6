"""The SQLite state's WAL stays bounded over many runs, with processes leaving as the CLI does."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import polars as pl
import pytest

from tasks.state.engines import CHECKPOINT_BUSY_MS, WAL_SIZE_LIMIT_BYTES
from tasks.state.store import StateStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

# One run in its own process: many requests' commits, then out through os._exit like the CLI,
# so no connection is closed and SQLite never checkpoints on its own account.
RUN = textwrap.dedent(
    """
    import os, sys
    import polars as pl
    from tasks.state.store import StateStore
    folder, run, products = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with StateStore(folder).exclusive(run) as store:
        ids = [f"p{i}" for i in range(products)]
        for start in range(0, products, 500):  # one commit per PUT of 500, as a load does
            part = ids[start : start + 500]
            store.commit(pl.DataFrame({"id": part, "quantity": [len(run)] * len(part)}), run)
        store.fold_pushed()
    print("done", flush=True)
    os._exit(0)
    """
)


def wal(folder: Path) -> int:
    path = folder / "state.sqlite3-wal"
    return path.stat().st_size if path.exists() else 0


def run_in_a_process(folder: Path, run: str, products: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(folder), run, str(products)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout == "done\n", done.stderr


def test_each_run_leaves_an_empty_wal_though_its_process_closes_nothing(tmp_path):
    sizes = []
    for number in range(6):
        run_in_a_process(tmp_path, f"run-{number}", products=20_000)
        sizes.append(((tmp_path / "state.sqlite3").stat().st_size, wal(tmp_path)))
    assert [w for _, w in sizes] == [0] * 6, "a run's writes are in the database file"
    assert sizes[-1][0] <= 2 * sizes[1][0], f"the database does not grow run after run: {sizes}"
    with StateStore(tmp_path).exclusive("check") as store:
        assert store.last_pushed().height == 20_000


def test_a_run_in_a_process_that_stays_leaves_an_empty_wal_too(tmp_path):
    """A worker's flow-run process keeps its pooled connections after the run."""
    store = StateStore(tmp_path)
    for number in range(3):
        with store.exclusive(f"run-{number}"):
            store.commit(pl.DataFrame({"id": ["a", "b"], "quantity": [number, 1]}), "r")
        assert wal(tmp_path) == 0
    assert dict(store.last_pushed().iter_rows()) == {"a": 2, "b": 1}


def test_every_connection_caps_the_wal_it_leaves(tmp_path):
    store = StateStore(tmp_path)
    with store.engine.connect() as connection:
        limit = connection.exec_driver_sql("PRAGMA journal_size_limit").scalar()
    assert limit == WAL_SIZE_LIMIT_BYTES


def test_a_reader_on_another_connection_delays_the_end_of_a_run_briefly_and_loses_nothing(
    tmp_path,
):
    store = StateStore(tmp_path)
    with store.exclusive("first"):
        store.commit(pl.DataFrame({"id": ["a"], "quantity": [1]}), "first")
    # a connection of its own, as another process's (a user's sqlite3 shell) reads without end
    with closing(sqlite3.connect(tmp_path / "state.sqlite3", isolation_level=None)) as other:
        other.execute("BEGIN")
        other.execute("SELECT count(*) FROM marks").fetchall()
        began = time.monotonic()
        with store.exclusive("second"):
            store.commit(pl.DataFrame({"id": ["a"], "quantity": [2]}), "second")
        waited = time.monotonic() - began
        assert waited < CHECKPOINT_BUSY_MS / 1000 + 5, "the checkpoint gives up, the run ends"
        assert wal(tmp_path) > 0, "the WAL cannot be emptied under a reader"
        other.execute("COMMIT")
    with store.exclusive("third"):
        pass
    assert wal(tmp_path) == 0
    assert dict(store.last_pushed().iter_rows()) == {"a": 2}
