"""The state store on literal data in a temporary folder: what landed, feed marks, snapshots, the lock."""

from __future__ import annotations

import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import select

from tasks.sources.feed import FEED_SCHEMA, Feed
from tasks.state import schema
from tasks.state.frames import to_blob
from tasks.state.legacy import snapshot_file_name
from tasks.state.lock import StateBusy
from tasks.state.store import PUSHED_SCHEMA, FeedMark, StateStore, fold

pytestmark = pytest.mark.fast

MONDAY = datetime(2026, 11, 23, 6, 30, tzinfo=UTC)
TUESDAY = datetime(2026, 11, 24, 6, 30, tzinfo=UTC)
LOG_FRAME = {"id": pl.String, "quantity": pl.Int64}


def landed(**quantities: int) -> pl.DataFrame:
    return pl.DataFrame({"id": list(quantities), "quantity": list(quantities.values())})


def pushed(store: StateStore) -> dict[str, int]:
    return dict(store.last_pushed().iter_rows())


def feed_rows(warehouse: str, *skus: str) -> pl.DataFrame:
    """A feed's rows, as every source gives them: the two texts."""
    return pl.DataFrame(
        {"sku_text": list(skus), "quantity_text": ["1"] * len(skus)}, schema=FEED_SCHEMA
    )


def test_a_new_store_remembers_nothing(tmp_path):
    store = StateStore(tmp_path / "state")
    assert store.last_pushed().schema == pl.Schema({"id": pl.String, "last_quantity": pl.Int64})
    assert store.last_pushed().height == 0
    assert store.feed_marks() == {}
    assert store.last_good_rows("east") is None
    assert (tmp_path / "state" / "state.sqlite3").exists()


def test_commit_records_what_landed_and_a_later_commit_overwrites_it(tmp_path):
    store = StateStore(tmp_path)
    store.commit(landed(a=1, b=2), run="run-1")
    store.commit(landed(b=5, c=0), run="run-2")
    assert pushed(store) == {"a": 1, "b": 5, "c": 0}
    assert pushed(StateStore(tmp_path)) == {"a": 1, "b": 5, "c": 0}, "kept on disk"


def test_landed_in_run_names_only_that_runs_products(tmp_path):
    store = StateStore(tmp_path)
    store.commit(landed(a=1, b=2), run="run-1")
    store.commit(landed(c=3), run="run-2")
    assert store.landed_in_run(["a", "b", "c", "zz"], "run-1") == {"a", "b"}
    assert store.landed_in_run(pl.Series(["a", "c"]), "run-2") == {"c"}
    assert store.landed_in_run([], "run-1") == set()
    store.commit(landed(a=9), run="run-2")  # run-2 landed a again
    assert store.landed_in_run(["a", "b"], "run-1") == {"a", "b"}  # run-1 did land both


def test_forget_drops_only_the_named_products(tmp_path):
    store = StateStore(tmp_path)
    store.commit(landed(a=1, b=2, c=3), run="run-1")
    store.forget(["b", "not-there"])
    assert pushed(store) == {"a": 1, "c": 3}
    store.forget([])
    assert pushed(store) == {"a": 1, "c": 3}


def test_a_good_feed_leaves_its_mark_and_its_rows(tmp_path):
    store = StateStore(tmp_path)
    rows = feed_rows("east", "A", "B")
    store.record_good_feed("east", MONDAY, "east.csv", rows, run="run-1")
    assert store.feed_marks() == {"east": FeedMark("east", MONDAY, "east.csv", "run-1")}
    assert store.last_good_rows("east").equals(rows)
    later = feed_rows("east", "C")
    store.record_good_feed("east", TUESDAY, "east-2.csv", later, run="run-2")
    assert store.feed_marks() == {"east": FeedMark("east", TUESDAY, "east-2.csv", "run-2")}
    assert store.last_good_rows("east").equals(later)
    assert [p for p in tmp_path.iterdir() if not p.name.startswith("state.sqlite3")] == []


def test_every_feed_of_a_run_is_recorded(tmp_path):
    store = StateStore(tmp_path)
    feeds = [
        Feed("east", "east.csv", feed_rows("east", "A"), 10, MONDAY, first_line=2),
        Feed("west", "west.parquet", feed_rows("west", "B", "C"), 20, TUESDAY, first_line=1),
    ]
    store.record_good_feeds(feeds, run="run-1")
    assert {name: mark.modified_at for name, mark in store.feed_marks().items()} == {
        "east": MONDAY,
        "west": TUESDAY,
    }
    assert store.last_good_rows("west")["sku_text"].to_list() == ["B", "C"]
    assert (store.last_good_first_line("east"), store.last_good_first_line("west")) == (2, 1)


def test_rows_written_ahead_count_only_once_their_run_is_recorded(tmp_path):
    store = StateStore(tmp_path)
    monday = Feed("east", "east.csv", feed_rows("east", "A"), 10, MONDAY, first_line=2)
    store.record_good_feeds([monday], run="run-1")

    tuesday = Feed("east", "east-2.csv", feed_rows("east", "B", "C"), 20, TUESDAY, first_line=1)
    failed = store.write_feed_rows_ahead([tuesday], run="run-2")
    failed.wait()  # written, but run-2 failed: it never records them
    assert store.last_good_rows("east")["sku_text"].to_list() == ["A"]
    assert (store.last_good_first_line("east"), store.feed_marks()["east"].run) == (2, "run-1")

    ahead = store.write_feed_rows_ahead([tuesday], run="run-3")
    store.record_good_feeds([tuesday], run="run-3", ahead=ahead)
    assert store.last_good_rows("east")["sku_text"].to_list() == ["B", "C"]
    assert store.last_good_first_line("east") == 1
    with store.engine.connect() as db:  # run-1's rows and run-2's leftovers are gone
        kept = db.execute(select(schema.feed_rows.c.run)).scalars().all()
    assert kept == ["run-3"]


def test_a_feed_that_is_already_the_last_good_one_is_not_written_again(tmp_path):
    store = StateStore(tmp_path)
    east = Feed("east", "east.csv", feed_rows("east", "A"), 10, MONDAY, first_line=2)
    west = Feed("west", "west.csv", feed_rows("west", "B"), 10, MONDAY, first_line=1)
    store.record_good_feeds([east, west], run="run-1")
    # run-2 read only west anew; east is its last good feed, as the guards hand it back
    west_again = Feed("west", "west-2.csv", feed_rows("west", "C"), 10, TUESDAY, first_line=1)
    store.record_good_feeds([east, west_again], run="run-2", ahead=None)
    marks = store.feed_marks()
    assert (marks["east"].run, marks["west"].run) == ("run-1", "run-2")
    assert store.last_good_rows("east")["sku_text"].to_list() == ["A"]
    assert store.last_good_rows("west")["sku_text"].to_list() == ["C"]
    with store.engine.connect() as db:
        kept = db.execute(select(schema.feed_rows.c.warehouse, schema.feed_rows.c.run)).all()
    assert sorted(kept) == [("east", "run-1"), ("west", "run-2")]


def test_a_failure_to_write_rows_ahead_is_raised_by_the_record(tmp_path):
    store = StateStore(tmp_path)
    broken = Feed("east", "east.csv", pl.DataFrame({"other": [1]}), 1, MONDAY, first_line=1)
    ahead = store.write_feed_rows_ahead([broken], run="run-1")
    with pytest.raises(pl.exceptions.ColumnNotFoundError):
        store.record_good_feeds([broken], run="run-1", ahead=ahead)
    assert store.feed_marks() == {}


@pytest.mark.parametrize(
    "names",
    [("east/1", "east_1"), ("east 1", "east_1"), ("..", "__"), ("Ost-Lager", "ost-lager")],
)
def test_warehouse_names_that_look_alike_keep_separate_snapshots(tmp_path, names):
    store = StateStore(tmp_path)
    for name in names:
        store.record_good_feed(name, MONDAY, f"{name}.csv", feed_rows(name, name), run="r")
    for name in names:
        assert store.last_good_rows(name)["sku_text"].to_list() == [name]


def test_a_second_handle_on_the_same_store_is_refused_while_a_run_holds_it(tmp_path):
    store = StateStore(tmp_path)
    with store.exclusive("run-1") as held:
        assert held is store
        with pytest.raises(StateBusy) as busy, StateStore(tmp_path).exclusive("run-2"):
            pytest.fail("a second run got the lock")
        assert str(busy.value).startswith(f"state {tmp_path} is in use by run run-1 (pid ")
        assert str(busy.value).endswith(
            "another run of this config is in progress; nothing was done "
            "(two syncs of one state never overlap)"
        )
        held.commit(landed(a=1), run="run-1")  # the holder keeps working
    with StateStore(tmp_path).exclusive("run-2"):  # released on exit
        assert pushed(store) == {"a": 1}


HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from tasks.state.store import StateStore
    with StateStore(sys.argv[1]).exclusive("other-run"):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def test_another_process_holding_the_lock_is_named_and_its_death_releases_it(tmp_path: Path):
    root = Path(__file__).resolve().parents[3]
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            busy = rf"in use by run other-run \(pid {holder.pid}, since "
            with pytest.raises(StateBusy, match=busy), StateStore(tmp_path).exclusive("mine"):
                pytest.fail("got the lock another process holds")
        finally:
            holder.kill()  # no clean exit: the kernel drops the lock with the process
    assert holder.returncode == -9
    with StateStore(tmp_path).exclusive("mine"):
        assert "run mine (pid" in (tmp_path / "run.lock").read_text()


def catalog_page(*ids: str) -> pl.DataFrame:
    return pl.DataFrame({"id": list(ids), "vendorSku": [i.upper() for i in ids]})


def test_a_refresh_keeps_each_page_and_only_a_finished_one_replaces_the_kept_catalog(tmp_path):
    store = StateStore(tmp_path)
    assert store.kept_catalog() is None and store.refresh_progress() is None
    store.start_refresh("https://api.test/products?page=1", per_page=2, now=MONDAY)
    store.save_refresh_page(1, catalog_page("a", "b"), "https://api.test/products?page=2")
    resumed = StateStore(tmp_path).refresh_progress()  # as a retry or the next run sees it
    assert resumed is not None
    assert (resumed.started_at, resumed.per_page, resumed.pages) == (MONDAY, 2, 1)
    assert resumed.next_url == "https://api.test/products?page=2"
    assert store.kept_catalog() is None, "half a catalog is never the kept one"
    store.save_refresh_page(2, catalog_page("c"), None)
    assert [p["id"].to_list() for p in store.refresh_pages()] == [["a", "b"], ["c"]]
    whole = pl.concat(store.refresh_pages())
    store.finish_refresh(whole, pages=2, per_page=2, now=TUESDAY)
    kept = store.kept_catalog()
    assert kept is not None and kept.frame.equals(whole)
    assert (kept.refreshed_at, kept.pages, kept.per_page) == (TUESDAY, 2, 2)
    assert store.refresh_progress() is None and store.refresh_pages() == []


def test_starting_a_refresh_drops_the_pages_of_an_unfinished_one(tmp_path):
    store = StateStore(tmp_path)
    store.start_refresh("p1", per_page=2, now=MONDAY)
    store.save_refresh_page(1, catalog_page("old"), "p2")
    progress = store.start_refresh("p1", per_page=5, now=TUESDAY)
    assert progress == store.refresh_progress()
    assert (progress.per_page, progress.next_url, progress.pages) == (5, "p1", 0)
    assert store.refresh_pages() == []


def test_the_read_back_rotation_and_what_it_audited(tmp_path):
    store = StateStore(tmp_path)
    assert store.read_back_start() == 1
    store.record_audit({1: 250, 2: 250}, next_page=3, now=MONDAY)
    store.record_audit({3: 100}, next_page=1, now=TUESDAY)  # the last page: back to the first
    assert store.read_back_start() == 1
    assert store.audited_since(MONDAY) == 600
    assert store.audited_since(TUESDAY) == 100
    store.record_audit({1: 250}, next_page=2, now=TUESDAY)  # page 1 again: counted once
    assert store.audited_since(MONDAY) == 600 and store.audited_since(TUESDAY) == 350


def test_the_log_of_landed_requests_folds_into_the_snapshot(tmp_path):
    store = StateStore(tmp_path)
    store.commit(landed(a=1, b=2), run="run-1")
    store.forget(["b"])
    store.commit(landed(b=7, c=0), run="run-2")
    assert pushed(store) == {"a": 1, "b": 7, "c": 0}  # read through the log before any fold
    assert store.fold_pushed() == 3 and store.fold_pushed() == 0
    assert pushed(StateStore(tmp_path)) == {"a": 1, "b": 7, "c": 0}
    store.forget(["a"])
    store.fold_pushed()
    assert pushed(store) == {"b": 7, "c": 0}


def test_rows_an_older_version_kept_are_read_and_folded_in(tmp_path):
    """The first versions kept pushed quantities row by row, in a table `pushed`."""
    with closing(sqlite3.connect(tmp_path / "state.sqlite3")) as db, db:
        db.execute(
            "CREATE TABLE pushed (product_id TEXT PRIMARY KEY, quantity INTEGER NOT NULL, "
            "pushed_at TEXT NOT NULL, run TEXT NOT NULL)"
        )
        db.executemany(
            "INSERT INTO pushed VALUES (?, ?, ?, ?)", [("a", 1, "t", "old"), ("b", 2, "t", "old")]
        )
    store = StateStore(tmp_path)  # upgraded on opening: the rows are the default tenant's
    assert pushed(store) == {"a": 1, "b": 2}
    store.commit(landed(b=3), run="new")
    store.fold_pushed()
    assert pushed(store) == {"a": 1, "b": 3}
    with closing(sqlite3.connect(store.location.sqlite_path)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert "pushed" not in tables and not {t for t in tables if t.startswith("legacy_")}


def test_a_snapshot_an_older_version_wrote_with_line_numbers_still_loads(tmp_path):
    """Versions before tenants kept each last good feed as a Parquet file, once with line numbers."""
    with closing(sqlite3.connect(tmp_path / "state.sqlite3")) as db, db:
        db.execute(
            "CREATE TABLE feeds (warehouse TEXT PRIMARY KEY, modified_at TEXT NOT NULL, "
            "source TEXT NOT NULL, run TEXT NOT NULL, recorded_at TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO feeds VALUES ('east', ?, 'e.csv', 'r', ?)",
            (MONDAY.isoformat(), MONDAY.isoformat()),
        )
    (tmp_path / "snapshots").mkdir()
    pl.DataFrame(
        {
            "warehouse": ["east"],
            "source": ["e.csv"],
            "line": [5],
            "sku_text": ["A"],
            "quantity_text": ["1"],
        }
    ).write_parquet(tmp_path / "snapshots" / snapshot_file_name("east"))
    store = StateStore(tmp_path)
    assert store.last_good_rows("east").columns == ["sku_text", "quantity_text"]
    assert store.last_good_first_line("east") == 5
    assert store.feed_marks()["east"].modified_at == MONDAY


def log_rows(store: StateStore) -> list[tuple[str, int, str, bytes | None]]:
    """The store's log of landed requests as stored: run, products, ids, quantities."""
    log = schema.pushed_log
    query = select(log.c.run, log.c.products, log.c.ids, log.c.quantities).order_by(log.c.seq)
    with store.engine.connect() as db:
        return [tuple(row) for row in db.execute(query)]


def snapshot_products(store: StateStore) -> int | None:
    with store.engine.connect() as db:
        return db.execute(select(schema.pushed_snapshot.c.products)).scalar()


def test_a_log_row_keeps_its_ids_as_lines_and_its_quantities_as_int64_bytes(tmp_path):
    store = StateStore(tmp_path)
    store.commit(landed(a=1, b=-2, c=3_000_000_000), run="run-1")
    store.commit(landed(), run="run-1")  # nothing landed: no row
    assert log_rows(store) == [
        ("run-1", 3, "a\nb\nc", struct.pack("<3q", 1, -2, 3_000_000_000)),
    ]
    assert pushed(store) == {"a": 1, "b": -2, "c": 3_000_000_000}


def test_a_forget_is_a_log_row_without_quantities(tmp_path):
    store = StateStore(tmp_path)
    store.commit(landed(a=1, b=2, c=3), run="run-1")
    store.fold_pushed()
    store.commit(landed(d=4), run="run-2")
    store.forget(["b", "d", "never-pushed"])
    assert log_rows(store)[-1] == ("", 3, "b\nd\nnever-pushed", None)
    assert pushed(store) == {"a": 1, "c": 3}  # through the log: the snapshot still has b
    assert store.landed_in_run(["d"], "run-2") == {"d"}  # it did land in run-2; a forget is no run
    assert store.landed_in_run(["b", "d"], "") == set()
    store.commit(landed(b=9), run="run-3")  # pushed again after the forget: the later entry wins
    assert pushed(store) == {"a": 1, "b": 9, "c": 3}
    assert store.fold_pushed() == 3
    assert pushed(store) == {"a": 1, "b": 9, "c": 3} and snapshot_products(store) == 3


def test_a_small_log_stays_unfolded_and_is_read_through_until_it_is_big_enough(tmp_path):
    store = StateStore(tmp_path)
    store.commit(landed(**{f"p{i}": i for i in range(10)}), run="full")
    assert store.fold_pushed(unless_below=0.2) == 1, "no snapshot yet: a first sync folds"
    assert snapshot_products(store) == 10 and log_rows(store) == []
    store.commit(landed(p1=100), run="cycle-1")  # 1 of 10: under 20 %
    assert store.fold_pushed(unless_below=0.2) == 0
    assert len(log_rows(store)) == 1 and snapshot_products(store) == 10
    assert pushed(StateStore(tmp_path))["p1"] == 100, "the log is read, folded or not"
    store.forget(["p2"])  # 2 of 10
    assert store.landed_in_run(["p1", "p2"], "cycle-1") == {"p1"}
    assert pushed(store).keys() == {f"p{i}" for i in range(10)} - {"p2"}
    assert store.fold_pushed(unless_below=0.2) == 2  # 20 %: folded
    assert log_rows(store) == [] and snapshot_products(store) == 9
    assert pushed(store) == {f"p{i}": i for i in range(10) if i != 2} | {"p1": 100}
    assert store.fold_pushed(unless_below=0.2) == 0 and store.fold_pushed() == 0  # nothing left
    store.commit(landed(p3=7), run="cycle-2")
    assert store.fold_pushed() == 1, "without a share, any log folds"


def test_a_fold_takes_the_latest_entry_whether_or_not_ids_repeat():
    def log(*entries: tuple[str, int | None]) -> pl.DataFrame:
        ids, quantities = zip(*entries, strict=True)
        return pl.DataFrame(
            {"id": ids, "quantity": quantities, "pushed_at": "t", "run": "r"},
            schema=PUSHED_SCHEMA,
        )

    def folded(snapshot: pl.DataFrame, entries: pl.DataFrame) -> dict[str, int]:
        return dict(fold(snapshot, entries).select("id", "quantity").iter_rows())

    empty = pl.DataFrame(schema=PUSHED_SCHEMA)
    assert folded(empty, log(("a", 1), ("b", 2))) == {"a": 1, "b": 2}
    assert folded(empty, log(("a", 1), ("a", 2), ("b", None), ("b", 3))) == {"a": 2, "b": 3}
    snapshot = log(("a", 1), ("b", 2), ("c", 3))
    assert folded(snapshot, log(("b", 5), ("c", None))) == {"a": 1, "b": 5}
    assert folded(snapshot, log(("b", 5), ("b", None), ("d", 4))) == {"a": 1, "c": 3, "d": 4}
    assert fold(snapshot, empty) is snapshot


@pytest.mark.parametrize("bad", [["a", "b\nc"], ["a", None]])
def test_an_id_the_log_cannot_keep_is_refused_before_anything_is_written(tmp_path, bad):
    store = StateStore(tmp_path)
    with pytest.raises(ValueError, match="null or holds a line break"):
        store.commit(pl.DataFrame({"id": bad, "quantity": [1, 2]}), run="run-1")
    with pytest.raises(ValueError, match="null or holds a line break"):
        store.forget(bad)
    assert log_rows(store) == []


def old_log_frame(ids: list[str], quantities: list[int | None]) -> bytes:
    return to_blob(pl.DataFrame({"id": ids, "quantity": quantities}, schema=LOG_FRAME))


def test_a_snapshot_and_an_arrow_log_from_before_tenants_give_the_same_last_pushed(tmp_path):
    """The version just before tenants: pushed_log rows (seq, run, at, forgotten, Arrow frame)."""
    snapshot = pl.DataFrame(
        {"id": ["a", "b", "c"], "quantity": [1, 2, 3], "pushed_at": "t0", "run": "r1"}
    )
    with closing(sqlite3.connect(tmp_path / "state.sqlite3")) as db, db:
        db.executescript(
            "CREATE TABLE pushed (product_id TEXT PRIMARY KEY, quantity INTEGER NOT NULL, "
            "pushed_at TEXT NOT NULL, run TEXT NOT NULL);"
            "CREATE TABLE pushed_snapshot (one INTEGER PRIMARY KEY CHECK (one = 1), "
            "folded_at TEXT NOT NULL, frame BLOB NOT NULL);"
            "CREATE TABLE pushed_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL, "
            "at TEXT NOT NULL, forgotten INTEGER NOT NULL, frame BLOB NOT NULL);"
        )
        db.execute("INSERT INTO pushed_snapshot VALUES (1, 't0', ?)", (to_blob(snapshot),))
        db.executemany(
            "INSERT INTO pushed_log (run, at, forgotten, frame) VALUES (?, ?, ?, ?)",
            [
                ("r2", "t1", 0, old_log_frame(["b", "d"], [20, 40])),
                ("r2", "t1", 0, old_log_frame([], [])),  # a request that landed nothing
                ("", "t2", 1, old_log_frame(["a", "d"], [None, None])),
                ("r3", "t3", 0, old_log_frame(["d"], [41])),
            ],
        )
    store = StateStore(tmp_path)
    assert pushed(store) == {"b": 20, "c": 3, "d": 41}
    assert log_rows(store) == [
        ("r2", 2, "b\nd", struct.pack("<2q", 20, 40)),
        ("", 2, "a\nd", None),
        ("r3", 1, "d", struct.pack("<q", 41)),
    ]
    assert snapshot_products(store) == 3
    assert store.landed_in_run(["a", "b", "d"], "r2") == {"b", "d"}
    assert store.fold_pushed(unless_below=0.2) == 3  # 5 logged of 3 kept
    assert pushed(StateStore(tmp_path)) == {"b": 20, "c": 3, "d": 41}
    assert snapshot_products(store) == 3


# the log writer: a load's request threads hand it what landed, it commits them in batches


def test_the_log_writer_records_every_request_from_many_threads_in_fewer_transactions(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = StateStore(tmp_path)
    requests = [landed(**{f"p{n}-{i}": n * 10 + i for i in range(3)}) for n in range(40)]
    with store.log_writer("run-1") as log, ThreadPoolExecutor(4) as pool:
        list(pool.map(log.add, requests))
    assert len(log_rows(store)) == 40  # a log row per request, as committed one by one
    assert log.transactions < 40
    assert pushed(store) == {pid: q for r in requests for pid, q in r.iter_rows()}
    assert store.landed_in_run(["p0-0", "p39-2", "nope"], "run-1") == {"p0-0", "p39-2"}


def test_leaving_the_log_writer_records_the_last_request_without_waiting_out_its_window(tmp_path):
    from tasks.state.log_writer import LogWriter

    store = StateStore(tmp_path)
    started = time.monotonic()
    with LogWriter(store, "run-1", window=5.0) as log:
        log.add(landed(a=1))
    assert time.monotonic() - started < 2.0
    assert pushed(store) == {"a": 1}


def test_a_failure_to_record_is_raised_by_the_next_add_and_on_leaving_and_stops_recording(tmp_path):
    from tasks.state.log_writer import LogWriter

    store = StateStore(tmp_path)
    refused = pytest.raises(ValueError, match="null or holds a line break")
    with refused, LogWriter(store, "run-1", window=0.0) as log:
        log.add(landed(a=1))
        log.add(pl.DataFrame({"id": ["b\nc"], "quantity": [2]}))
        deadline = time.monotonic() + 10
        while log._error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(ValueError, match="null or holds a line break"):
            log.add(landed(d=4))
    assert "d" not in pushed(store)


def test_a_state_folder_deleted_under_a_running_process_starts_afresh(tmp_path):
    import shutil

    folder = tmp_path / "state"
    StateStore(folder).commit(landed(a=1), run="run-1")
    shutil.rmtree(folder)
    again = StateStore(folder)  # the pooled engine was made for the deleted file
    assert pushed(again) == {}
    again.commit(landed(b=2), run="run-2")
    with closing(sqlite3.connect(folder / "state.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM pushed_log").fetchone() == (1,)
