"""What the sync remembers between runs: pushed quantities, feed ages, the catalog, read-back rotation.

SQLite in WAL mode with synchronous=FULL makes each commit atomic and durable: a process
killed at any moment leaves either the whole request recorded or none of it. Snapshots are
written to a temporary file, fsynced, then renamed over the old one.

Pushed quantities are a snapshot of every product (one Arrow blob) plus a log of what landed
since, one row per accepted request; a run folds its log into the snapshot when its load is
done. Upserting a million products row by row cost ~18 s per full sync; a log row costs what
one small commit does.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from tasks.run_lock import StateBusy as StateBusy  # what exclusive() raises
from tasks.run_lock import adopt, run_lock, say_who_holds
from tasks.sources.feed import FEED_SCHEMA, Feed

SCHEMA = """
CREATE TABLE IF NOT EXISTS pushed (
    product_id TEXT PRIMARY KEY,
    quantity INTEGER NOT NULL,
    pushed_at TEXT NOT NULL,
    run TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pushed_snapshot (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    folded_at TEXT NOT NULL,
    frame BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pushed_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    at TEXT NOT NULL,
    forgotten INTEGER NOT NULL,
    frame BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS feeds (
    warehouse TEXT PRIMARY KEY,
    modified_at TEXT NOT NULL,
    source TEXT NOT NULL,
    run TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    refreshed_at TEXT NOT NULL,
    products INTEGER NOT NULL,
    pages INTEGER NOT NULL,
    per_page INTEGER NOT NULL,
    frame BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog_refresh (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    started_at TEXT NOT NULL,
    per_page INTEGER NOT NULL,
    next_url TEXT,
    pages INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog_refresh_pages (
    page INTEGER PRIMARY KEY,
    frame BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audited_pages (
    page INTEGER PRIMARY KEY,
    audited_at TEXT NOT NULL,
    products INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
READ_BACK_NEXT_PAGE = "read_back_next_page"
FIRST_LINE = "first_line"  # in a snapshot's Parquet metadata: the line of its first row
LAST_PUSHED_SCHEMA = {"id": pl.String, "last_quantity": pl.Int64}
# the snapshot of pushed quantities (the table `pushed` is what older versions kept, row by row)
PUSHED_SCHEMA = {"id": pl.String, "quantity": pl.Int64, "pushed_at": pl.String, "run": pl.String}


@dataclass(frozen=True)
class KeptCatalog:
    """The catalog as the last complete refresh read it."""

    frame: pl.DataFrame
    refreshed_at: datetime
    pages: int
    per_page: int


@dataclass(frozen=True)
class RefreshProgress:
    """A catalog refresh under way: where it started, and the next page to read (None: all read)."""

    started_at: datetime
    per_page: int
    next_url: str | None
    pages: int


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
        """Hold the store's lock for a whole run; a second run on the same store fails at once.

        A lock this process took for its next run (the CLI's, see `lock_for_next_run`) is
        adopted instead of taken again.
        """
        holder = f"run {run}"
        handed_over = adopt(self.folder)
        if handed_over:
            say_who_holds(handed_over, holder)
        lock = nullcontext(handed_over) if handed_over else run_lock(self.folder, holder)
        # While one connection stays open, closing the others does not checkpoint the WAL
        # (with its fsyncs): each chunk's commit costs about half as much. Commits are as
        # durable as before; the WAL is checkpointed when this one closes.
        with lock, closing(sqlite3.connect(self.path, isolation_level=None)) as keeper:
            keeper.execute("SELECT 1 FROM pushed LIMIT 1").fetchall()
            yield self

    def last_pushed(self) -> pl.DataFrame:
        """id, last_quantity: every product this store has seen land (and not forgotten since)."""
        with self._connect() as db:
            snapshot = self._snapshot(db, ["id", "quantity"])
            pushed = _fold(
                snapshot, _log(db.execute(LOG_QUERY).fetchall()).select(snapshot.columns)
            )
        return pushed.select("id", pl.col("quantity").alias("last_quantity"))

    def commit(self, landed: pl.DataFrame, run: str) -> None:
        """Record products the API accepted (id, quantity), in one transaction: one log row."""
        blob = _blob(landed.select("id", "quantity"))
        with self._connect() as db:
            db.execute(
                "INSERT INTO pushed_log (run, at, forgotten, frame) VALUES (?, ?, 0, ?)",
                (run, _now(), blob),
            )

    def landed_in_run(self, product_ids: Iterable[str], run: str) -> set[str]:
        """Which of these products this run has recorded as landed (until the run folds its log)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT frame FROM pushed_log WHERE run = ? AND forgotten = 0", (run,)
            ).fetchall()
        if not rows:
            return set()
        landed = pl.concat([_frame(blob)["id"] for (blob,) in rows])
        wanted = pl.Series("id", list(product_ids), dtype=pl.String)
        return set(wanted.filter(wanted.is_in(landed.implode())).to_list())

    def forget(self, product_ids: Iterable[str]) -> None:
        """Drop what we believe was pushed, so the next run sends these products again."""
        ids = pl.Series("id", list(product_ids), dtype=pl.String)
        if ids.len() == 0:
            return
        frame = pl.DataFrame(
            {"id": ids, "quantity": pl.repeat(None, ids.len(), dtype=pl.Int64, eager=True)}
        )
        with self._connect() as db:
            db.execute(
                "INSERT INTO pushed_log (run, at, forgotten, frame) VALUES ('', ?, 1, ?)",
                (_now(), _blob(frame)),
            )

    def fold_pushed(self) -> int:
        """Fold the log of landed requests into the snapshot, in one transaction; log rows folded."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            entries = db.execute(LOG_QUERY).fetchall()
            legacy = db.execute("SELECT 1 FROM pushed LIMIT 1").fetchone() is not None
            if not entries and not legacy:
                db.execute("COMMIT")
                return 0
            pushed = _fold(self._snapshot(db), _log(entries))
            db.execute(
                "INSERT OR REPLACE INTO pushed_snapshot (one, folded_at, frame) VALUES (1, ?, ?)",
                (_now(), _blob(pushed)),
            )
            if entries:
                db.execute("DELETE FROM pushed_log WHERE seq <= ?", (entries[-1][0],))
            db.execute("DELETE FROM pushed")
            db.execute("COMMIT")
        return len(entries)

    def _snapshot(self, db: sqlite3.Connection, columns: list[str] | None = None) -> pl.DataFrame:
        """The folded snapshot (PUSHED_SCHEMA, or those columns); before the first fold, the rows
        older versions kept."""
        row = db.execute("SELECT frame FROM pushed_snapshot WHERE one = 1").fetchone()
        if row is not None:
            return pl.read_ipc(io.BytesIO(row[0]), columns=columns)
        rows = db.execute("SELECT product_id, quantity, pushed_at, run FROM pushed").fetchall()
        return pl.DataFrame(rows, schema=PUSHED_SCHEMA, orient="row").select(columns or pl.all())

    def feed_marks(self) -> dict[str, FeedMark]:
        with self._connect() as db:
            rows = db.execute("SELECT warehouse, modified_at, source, run FROM feeds").fetchall()
        return {
            name: FeedMark(name, datetime.fromisoformat(modified), source, run)
            for name, modified, source, run in rows
        }

    def record_good_feed(
        self,
        warehouse: str,
        modified_at: datetime,
        source: str,
        rows: pl.DataFrame,
        run: str,
        first_line: int = 1,
    ) -> None:
        """After a successful run: remember the feed's age and keep its rows as the last good one."""
        self._write_snapshot(warehouse, rows, first_line)
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
            self.record_good_feed(
                feed.warehouse, feed.modified_at, feed.source, feed.rows, run, feed.first_line
            )

    # the catalog kept between runs, and a refresh that survives a kill

    def kept_catalog(self) -> KeptCatalog | None:
        """The catalog of the last complete refresh, or None if there has been none."""
        with self._connect() as db:
            row = db.execute(
                "SELECT frame, refreshed_at, pages, per_page FROM catalog WHERE one = 1"
            ).fetchone()
        if row is None:
            return None
        frame, refreshed_at, pages, per_page = row
        return KeptCatalog(_frame(frame), datetime.fromisoformat(refreshed_at), pages, per_page)

    def refresh_progress(self) -> RefreshProgress | None:
        """The refresh under way, if a run started one and did not finish it."""
        with self._connect() as db:
            row = db.execute(
                "SELECT started_at, per_page, next_url, pages FROM catalog_refresh WHERE one = 1"
            ).fetchone()
        if row is None:
            return None
        started_at, per_page, next_url, pages = row
        return RefreshProgress(datetime.fromisoformat(started_at), per_page, next_url, pages)

    def start_refresh(self, first_url: str, per_page: int, now: datetime) -> RefreshProgress:
        """Begin a refresh from the first page, dropping the pages of any earlier one."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM catalog_refresh_pages")
            db.execute(
                "INSERT OR REPLACE INTO catalog_refresh (one, started_at, per_page, next_url, pages)"
                " VALUES (1, ?, ?, ?, 0)",
                (now.isoformat(), per_page, first_url),
            )
            db.execute("COMMIT")
        return RefreshProgress(now, per_page, first_url, 0)

    def save_refresh_page(self, page: int, frame: pl.DataFrame, next_url: str | None) -> None:
        """Keep one page read, and where the next one is, in one transaction."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR REPLACE INTO catalog_refresh_pages (page, frame) VALUES (?, ?)",
                (page, _blob(frame)),
            )
            db.execute(
                "UPDATE catalog_refresh SET next_url = ?, pages = ? WHERE one = 1", (next_url, page)
            )
            db.execute("COMMIT")

    def refresh_pages(self) -> list[pl.DataFrame]:
        """The pages the refresh under way has read, in order."""
        with self._connect() as db:
            rows = db.execute("SELECT frame FROM catalog_refresh_pages ORDER BY page").fetchall()
        return [_frame(blob) for (blob,) in rows]

    def finish_refresh(
        self, catalog: pl.DataFrame, pages: int, per_page: int, now: datetime
    ) -> None:
        """Make a complete refresh the kept catalog, and forget its pages, in one transaction."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR REPLACE INTO catalog "
                "(one, refreshed_at, products, pages, per_page, frame) VALUES (1, ?, ?, ?, ?, ?)",
                (now.isoformat(), catalog.height, pages, per_page, _blob(catalog)),
            )
            db.execute("DELETE FROM catalog_refresh_pages")
            db.execute("DELETE FROM catalog_refresh")
            db.execute("COMMIT")

    # the read-back's rotation through the catalog

    def read_back_start(self) -> int:
        """The catalog page the next read-back starts at (1 when none has run)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT value FROM marks WHERE key = ?", (READ_BACK_NEXT_PAGE,)
            ).fetchone()
        return int(row[0]) if row else 1

    def record_audit(self, pages: dict[int, int], next_page: int, now: datetime) -> None:
        """Remember which pages were read back (page → products on it) and where to go on."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR REPLACE INTO audited_pages (page, audited_at, products) VALUES (?, ?, ?)",
                [(page, now.isoformat(), n) for page, n in pages.items()],
            )
            db.execute(
                "INSERT OR REPLACE INTO marks (key, value) VALUES (?, ?)",
                (READ_BACK_NEXT_PAGE, str(next_page)),
            )
            db.execute("COMMIT")

    def audited_since(self, since: datetime) -> int:
        """How many products the read-back has compared since then (each page counted once)."""
        with self._connect() as db:
            (total,) = db.execute(
                "SELECT COALESCE(SUM(products), 0) FROM audited_pages WHERE audited_at >= ?",
                (since.isoformat(),),
            ).fetchone()
        return int(total)

    def last_good_rows(self, warehouse: str) -> pl.DataFrame | None:
        """The rows (sku_text, quantity_text) of the warehouse's last good feed."""
        path = self._snapshot_path(warehouse)
        return pl.read_parquet(path).select(list(FEED_SCHEMA)) if path.exists() else None

    def last_good_first_line(self, warehouse: str) -> int:
        """The line the first row of the warehouse's last good feed came from."""
        path = self._snapshot_path(warehouse)
        first_line = pl.read_parquet_metadata(path).get(FIRST_LINE)
        if first_line is not None:
            return int(first_line)
        rows = pl.read_parquet(path)  # written before feeds kept only their texts
        return int(rows["line"][0]) if rows.height and "line" in rows.columns else 1

    def _snapshot_path(self, warehouse: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", warehouse)[:40]
        digest = hashlib.sha1(warehouse.encode()).hexdigest()[:8]
        return self.snapshots / f"{safe}-{digest}.parquet"

    def _write_snapshot(self, warehouse: str, rows: pl.DataFrame, first_line: int) -> None:
        self.snapshots.mkdir(exist_ok=True)
        final = self._snapshot_path(warehouse)
        temporary = final.with_suffix(".parquet.tmp")
        rows.write_parquet(temporary, metadata={FIRST_LINE: str(first_line)})
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        directory = os.open(self.snapshots, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


LOG_QUERY = "SELECT seq, run, at, forgotten, frame FROM pushed_log ORDER BY seq"


def _log(entries: list[tuple[int, str, str, int, bytes]]) -> pl.DataFrame:
    """The log's entries in order, one row per product: PUSHED_SCHEMA, quantity null = forgotten."""
    frames = [
        _frame(blob).with_columns(
            pl.when(pl.lit(bool(forgotten)))
            .then(None)
            .otherwise(pl.col("quantity"))
            .alias("quantity"),
            pl.lit(at).alias("pushed_at"),
            pl.lit(run).alias("run"),
        )
        for _, run, at, forgotten, blob in entries
    ]
    return pl.concat(frames) if frames else pl.DataFrame(schema=PUSHED_SCHEMA)


def _fold(snapshot: pl.DataFrame, log: pl.DataFrame) -> pl.DataFrame:
    """The snapshot with the log applied in order: the latest entry per product wins."""
    if log.height == 0:
        return snapshot
    latest = log.unique("id", keep="last", maintain_order=True)
    kept = snapshot.join(latest.select("id"), on="id", how="anti")
    return pl.concat([kept, latest.filter(pl.col("quantity").is_not_null())])


def _blob(frame: pl.DataFrame) -> bytes:
    """A frame as Arrow IPC bytes: read back in milliseconds, even at a million rows."""
    buffer = io.BytesIO()
    frame.write_ipc(buffer, compression="lz4")
    return buffer.getvalue()


def _frame(blob: bytes) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(blob))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
