"""What the sync remembers between runs: pushed quantities, feed ages, the catalog, read-back rotation.

Every write is one transaction (SQLite in WAL mode, or PostgreSQL), so a process killed at
any moment leaves either the whole request recorded or none of it. On SQLite, WAL with
synchronous=NORMAL makes each commit survive the process (kill -9 included); only an OS crash
or a power cut can undo the last few commits, and then the next run sends those products
again, which is harmless: quantities are absolute. (FULL would add an fsync to every
commit.) A PostgreSQL commit is as durable as its server is configured to make it.
Everything is keyed by tenant, so many suppliers can share one database.

Pushed quantities are a snapshot of every product (one Arrow blob) plus a log of what landed
since, one row per accepted request (its ids as text, its quantities as int64 bytes: see
tasks.state.frames). A load folds the log into the snapshot once the log holds a fair share
of it (`fold_pushed(unless_below=...)`): a 2 % cycle does not rewrite a million-product
snapshot, and last_pushed reads the rest through the log. Upserting a million products row by
row would make every full sync slow; a log row costs what one small commit does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import Connection, delete, func, insert, select, update

from tasks.sources.feed import FEED_SCHEMA, Feed
from tasks.state import schema
from tasks.state.engines import READ, checkpoint_wal, engine_for, sqlite_write_lock
from tasks.state.frames import (
    decode_log,
    from_blob,
    log_ids,
    log_quantities,
    split_log_ids,
    to_blob,
)
from tasks.state.location import SQLITE, StateLocation
from tasks.state.lock import adopt, check_still_held, run_lock, say_who_holds
from tasks.state.log_writer import LogWriter
from tasks.text_columns import is_duplicated

READ_BACK_NEXT_PAGE = "read_back_next_page"
# the snapshot of pushed quantities
PUSHED_SCHEMA = {"id": pl.String, "quantity": pl.Int64, "pushed_at": pl.String, "run": pl.String}
# a row of the log of landed requests: seq, run, at, ids, quantities (None: a forget)
LogEntry = tuple[int, str, str, str, bytes | None]


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
    """One tenant's state: last pushed quantities, last good feeds, the kept catalog, the rotation."""

    def __init__(self, location: StateLocation | str | Path, tenant: str | None = None) -> None:
        self.location = StateLocation.of(location, tenant)
        self.tenant = self.location.tenant
        self.engine = engine_for(self.location)
        self._dialect = self.location.dialect
        self._reader = self.engine.execution_options(**{READ: True})
        self._ahead: list[FeedRowsAhead] = []
        self._write_lock = (
            sqlite_write_lock(self.location) if self._dialect == SQLITE else nullcontext()
        )

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One durable transaction, refused if this process has lost the tenant's run lock."""
        with self._write_lock, self.engine.begin() as connection:
            check_still_held(connection, self.location)
            yield connection

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._reader.connect() as connection:
            yield connection

    def _upsert(self, connection: Connection, table: Any, rows: Sequence[dict[str, Any]]) -> None:
        schema.upsert_rows(connection, table, rows)

    def _mine(self, table: Any) -> Any:
        return table.c.tenant == self.tenant

    @contextmanager
    def exclusive(self, run: str) -> Iterator[StateStore]:
        """Hold the tenant's lock for a whole run; a second run on the same state fails at once.

        A lock this process took for its next run (the CLI's, see `lock_for_next_run`) is
        adopted instead of taken again.
        """
        holder = f"run {run}"
        handed_over = adopt(self.location)
        if handed_over is not None:
            say_who_holds(handed_over, holder)
        lock = nullcontext(handed_over) if handed_over else run_lock(self.location, holder)
        with self._then_checkpointed(lock), self._keeping_the_wal():
            try:
                yield self
            finally:  # a run that ends early still writes nothing once its lock is gone
                for ahead in self._ahead:
                    ahead.finish()

    @contextmanager
    def _then_checkpointed(self, lock: AbstractContextManager[Any]) -> Iterator[None]:
        """Hold the run's lock; once it is released, empty the WAL into the database file."""
        held = False
        try:
            with lock:
                held = True
                yield
        finally:  # a run that failed wrote too; one refused the lock wrote nothing
            if held:
                checkpoint_wal(self.location)

    @contextmanager
    def _keeping_the_wal(self) -> Iterator[None]:
        """SQLite: one connection open for the run, so closing the others does not checkpoint.

        Each request's commit then costs less; commits are as durable, and the
        run's end checkpoints the WAL (`_then_checkpointed`).
        """
        if self._dialect != SQLITE:
            yield
            return
        with self._reader.connect() as keeper:
            keeper.exec_driver_sql("SELECT 1 FROM marks LIMIT 1").fetchall()
            keeper.rollback()  # the connection stays open, outside any transaction
            yield

    def last_pushed(self) -> pl.DataFrame:
        """id, last_quantity: every product this store has seen land (and not forgotten since)."""
        with self._reading() as db:
            snapshot = self._snapshot(db, ["id", "quantity"])
            pushed = fold(snapshot, _log(self._log_entries(db)).select(snapshot.columns))
        return pushed.select("id", pl.col("quantity").alias("last_quantity"))

    def commit(self, landed: pl.DataFrame, run: str) -> None:
        """Record products the API accepted (id, quantity), in one transaction: one log row."""
        self.commit_all([landed], run)

    def commit_all(self, requests: Sequence[pl.DataFrame], run: str) -> None:
        """Record several accepted requests in one transaction: a log row each."""
        self._append_log(
            [
                self._log_row(run, landed["id"], log_quantities(landed["quantity"]))
                for landed in requests
                if landed.height
            ]
        )

    def log_writer(self, run: str) -> LogWriter:
        """A writer that records accepted requests from many threads, a transaction per batch."""
        return LogWriter(self, run)

    def landed_in_run(self, product_ids: Iterable[str], run: str) -> set[str]:
        """Which of these products this run has recorded as landed (until its log is folded)."""
        wanted = pl.Series("id", list(product_ids), dtype=pl.String)
        if wanted.len() == 0:
            return set()
        log = schema.pushed_log
        query = select(log.c.ids).where(
            self._mine(log), log.c.run == run, log.c.quantities.is_not(None)
        )
        with self._reading() as db:
            texts = list(db.execute(query).scalars())
        if not texts:
            return set()
        landed = split_log_ids(texts).explode()
        return set(wanted.filter(wanted.is_in(landed.implode())).to_list())

    def forget(self, product_ids: Iterable[str]) -> None:
        """Drop what we believe was pushed, so the next run sends these products again."""
        ids = pl.Series("id", list(product_ids), dtype=pl.String)
        if ids.len() == 0:
            return
        self._append_log([self._log_row("", ids, None)])

    def fold_pushed(self, unless_below: float = 0.0) -> int:
        """Fold the log of landed requests into the snapshot, in one transaction; rows folded.

        With `unless_below`, a log holding fewer products than that share of the snapshot's is
        left as it is (0 is returned): rewriting a million-product snapshot for a few thousand
        products costs more than reading them through the log for a few more runs.
        """
        log, table = schema.pushed_log, schema.pushed_snapshot
        with self._writing() as db:
            if unless_below > 0:
                logged = db.execute(
                    select(func.coalesce(func.sum(log.c.products), 0)).where(self._mine(log))
                ).scalar_one()
                kept = db.execute(select(table.c.products).where(self._mine(table))).scalar()
                if kept and logged < unless_below * kept:
                    return 0
            entries = self._log_entries(db)
            if not entries:
                return 0
            pushed = fold(self._snapshot(db), _log(entries))
            snapshot = {
                "tenant": self.tenant,
                "folded_at": _now(),
                "products": pushed.height,
                "frame": to_blob(pushed),
            }
            self._upsert(db, table, [snapshot])
            db.execute(delete(log).where(self._mine(log), log.c.seq <= entries[-1][0]))
        return len(entries)

    def _append_log(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows of the log (see _log_row), in one transaction."""
        if rows:
            with self._writing() as db:
                db.execute(insert(schema.pushed_log), rows)

    def _log_row(self, run: str, ids: pl.Series, quantities: bytes | None) -> dict[str, Any]:
        """One row of the log: these products landed with these quantities (None: forgotten)."""
        return {
            "tenant": self.tenant,
            "run": run,
            "at": _now(),
            "products": ids.len(),
            "ids": log_ids(ids),
            "quantities": quantities,
        }

    def _log_entries(self, db: Connection) -> list[LogEntry]:
        log = schema.pushed_log
        columns = (log.c.seq, log.c.run, log.c.at, log.c.ids, log.c.quantities)
        query = select(*columns).where(self._mine(log)).order_by(log.c.seq)
        return [tuple(row) for row in db.execute(query)]  # type: ignore[misc]

    def _snapshot(self, db: Connection, columns: list[str] | None = None) -> pl.DataFrame:
        """The folded snapshot (PUSHED_SCHEMA, or those columns); empty before the first fold."""
        table = schema.pushed_snapshot
        blob = db.execute(select(table.c.frame).where(self._mine(table))).scalar()
        if blob is None:
            return pl.DataFrame(schema=PUSHED_SCHEMA).select(columns or pl.all())
        return from_blob(blob, columns)

    def feed_marks(self) -> dict[str, FeedMark]:
        table = schema.feeds
        query = select(table.c.warehouse, table.c.modified_at, table.c.source, table.c.run)
        with self._reading() as db:
            rows = db.execute(query.where(self._mine(table))).fetchall()
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
        """After a successful run: remember the feed's age and keep its rows."""
        feed = Feed(warehouse, source, rows, 0, modified_at, first_line=first_line)
        self.record_good_feeds([feed], run)

    def record_good_feeds(
        self, feeds: Iterable[Feed], run: str, ahead: FeedRowsAhead | None = None
    ) -> None:
        """Remember every feed of a successful run: its mark, and its rows as the last good ones.

        One transaction moves the marks of the feeds that are new and drops the rows they
        replace; a feed that is its warehouse's last good one already (same source and time,
        e.g. a warehouse this run did not read) keeps its mark and rows. With `ahead`
        (write_feed_rows_ahead), the rows are already written.
        """
        fresh = self._new_feeds(feeds)
        if ahead is None:
            self._write_feed_rows(fresh, run)
        else:
            ahead.wait()
        if not fresh:
            return
        rows = schema.feed_rows
        names = [feed.warehouse for feed in fresh]
        marks = [
            {"tenant": self.tenant, "warehouse": feed.warehouse, "run": run}
            | {"modified_at": feed.modified_at.isoformat(), "source": feed.source}
            | {"recorded_at": _now()}
            for feed in fresh
        ]
        with self._writing() as db:
            self._upsert(db, schema.feeds, marks)
            db.execute(
                delete(rows).where(self._mine(rows), rows.c.warehouse.in_(names), rows.c.run != run)
            )

    def write_feed_rows_ahead(self, feeds: Sequence[Feed], run: str) -> FeedRowsAhead:
        """Start writing the new feeds' rows in the background, not yet as the last good ones.

        Done while the run checks and sends instead of after it, since a million products'
        rows take a while to write. Only record_good_feeds(..., ahead) makes them
        current; a run that fails leaves them unreferenced, and the next good run's record
        drops them. The run's lock is not released before the writing ends (see exclusive).
        """
        ahead = FeedRowsAhead()
        self._ahead.append(ahead)
        fresh = self._new_feeds(feeds)

        def write() -> None:
            try:
                self._write_feed_rows(fresh, run)
            except BaseException as exc:  # re-raised by wait(), in the run's own thread
                ahead.errors.append(exc)

        ahead.thread = threading.Thread(target=write, name="feed-rows-ahead", daemon=True)
        ahead.thread.start()
        return ahead

    def _new_feeds(self, feeds: Iterable[Feed]) -> list[Feed]:
        """The feeds that are not their warehouse's last good feed already."""
        marks = self.feed_marks()
        return [
            feed
            for feed in feeds
            if (mark := marks.get(feed.warehouse)) is None
            or (mark.source, mark.modified_at) != (feed.source, feed.modified_at)
        ]

    def _write_feed_rows(self, feeds: Iterable[Feed], run: str) -> None:
        """Each feed's rows under this run's key, a transaction each; current once marked."""
        for feed in feeds:
            kept = {
                "tenant": self.tenant,
                "warehouse": feed.warehouse,
                "run": run,
                "first_line": feed.first_line,
                "frame": to_blob(feed.rows.select(list(FEED_SCHEMA))),
            }
            with self._writing() as db:
                self._upsert(db, schema.feed_rows, [kept])

    def _current_feed_rows(self, *columns: Any) -> Any:
        """SELECT columns of the rows the warehouse's mark names (bind the warehouse)."""
        rows, marks = schema.feed_rows, schema.feeds
        joined = rows.join(
            marks,
            (marks.c.tenant == rows.c.tenant)
            & (marks.c.warehouse == rows.c.warehouse)
            & (marks.c.run == rows.c.run),
        )
        return select(*columns).select_from(joined).where(self._mine(rows))

    def last_good_rows(self, warehouse: str) -> pl.DataFrame | None:
        """The rows (sku_text, quantity_text) of the warehouse's last good feed."""
        table = schema.feed_rows
        query = self._current_feed_rows(table.c.frame).where(table.c.warehouse == warehouse)
        with self._reading() as db:
            blob = db.execute(query).scalar()
        return from_blob(blob).select(list(FEED_SCHEMA)) if blob is not None else None

    def last_good_first_line(self, warehouse: str) -> int:
        """The line the first row of the warehouse's last good feed came from."""
        table = schema.feed_rows
        query = self._current_feed_rows(table.c.first_line).where(table.c.warehouse == warehouse)
        with self._reading() as db:
            line = db.execute(query).scalar()
        return int(line) if line is not None else 1

    # the catalog kept between runs, and a refresh that survives a kill

    def kept_catalog(self) -> KeptCatalog | None:
        """The catalog of the last complete refresh, or None if there has been none."""
        table = schema.catalog
        columns = (table.c.frame, table.c.refreshed_at, table.c.pages, table.c.per_page)
        with self._reading() as db:
            row = db.execute(select(*columns).where(self._mine(table))).first()
        if row is None:
            return None
        frame, refreshed_at, pages, per_page = row
        return KeptCatalog(from_blob(frame), datetime.fromisoformat(refreshed_at), pages, per_page)

    def refresh_progress(self) -> RefreshProgress | None:
        """The refresh under way, if a run started one and did not finish it."""
        table = schema.catalog_refresh
        columns = (table.c.started_at, table.c.per_page, table.c.next_url, table.c.pages)
        with self._reading() as db:
            row = db.execute(select(*columns).where(self._mine(table))).first()
        if row is None:
            return None
        started_at, per_page, next_url, pages = row
        return RefreshProgress(datetime.fromisoformat(started_at), per_page, next_url, pages)

    def start_refresh(self, first_url: str, per_page: int, now: datetime) -> RefreshProgress:
        """Begin a refresh from the first page, dropping the pages of any earlier one."""
        pages = schema.catalog_refresh_pages
        progress = {"started_at": now.isoformat(), "per_page": per_page, "next_url": first_url}
        with self._writing() as db:
            db.execute(delete(pages).where(self._mine(pages)))
            self._upsert(
                db, schema.catalog_refresh, [{"tenant": self.tenant, **progress, "pages": 0}]
            )
        return RefreshProgress(now, per_page, first_url, 0)

    def save_refresh_page(self, page: int, frame: pl.DataFrame, next_url: str | None) -> None:
        """Keep one page read, and where the next one is, in one transaction."""
        refresh = schema.catalog_refresh
        with self._writing() as db:
            self._upsert(
                db,
                schema.catalog_refresh_pages,
                [{"tenant": self.tenant, "page": page, "frame": to_blob(frame)}],
            )
            db.execute(
                update(refresh).where(self._mine(refresh)).values(next_url=next_url, pages=page)
            )

    def refresh_pages(self) -> list[pl.DataFrame]:
        """The pages the refresh under way has read, in order."""
        table = schema.catalog_refresh_pages
        with self._reading() as db:
            blobs = db.execute(
                select(table.c.frame).where(self._mine(table)).order_by(table.c.page)
            ).scalars()
            return [from_blob(blob) for blob in blobs]

    def finish_refresh(
        self, catalog: pl.DataFrame, pages: int, per_page: int, now: datetime
    ) -> None:
        """Make a complete refresh the kept catalog, and forget its pages, in one transaction."""
        kept = {
            "tenant": self.tenant,
            "refreshed_at": now.isoformat(),
            "products": catalog.height,
            "pages": pages,
            "per_page": per_page,
            "frame": to_blob(catalog),
        }
        with self._writing() as db:
            self._upsert(db, schema.catalog, [kept])
            for table in (schema.catalog_refresh_pages, schema.catalog_refresh):
                db.execute(delete(table).where(self._mine(table)))

    # the read-back's rotation through the catalog

    def read_back_start(self) -> int:
        """The catalog page the next read-back starts at (1 when none has run)."""
        table = schema.marks
        with self._reading() as db:
            value = db.execute(
                select(table.c.value).where(self._mine(table), table.c.key == READ_BACK_NEXT_PAGE)
            ).scalar()
        return int(value) if value is not None else 1

    def record_audit(self, pages: dict[int, int], next_page: int, now: datetime) -> None:
        """Remember which pages were read back (page → products on it) and where to go on."""
        audited = [
            {"tenant": self.tenant, "page": page, "audited_at": now.isoformat(), "products": n}
            for page, n in pages.items()
        ]
        mark = {"tenant": self.tenant, "key": READ_BACK_NEXT_PAGE, "value": str(next_page)}
        with self._writing() as db:
            self._upsert(db, schema.audited_pages, audited)
            self._upsert(db, schema.marks, [mark])

    def audited_since(self, since: datetime) -> int:
        """How many products the read-back has compared since then (each page counted once)."""
        table = schema.audited_pages
        query = select(func.coalesce(func.sum(table.c.products), 0)).where(
            self._mine(table), table.c.audited_at >= since.isoformat()
        )
        with self._reading() as db:
            return int(db.execute(query).scalar_one())


@dataclass
class FeedRowsAhead:
    """Feed rows being written in the background (StateStore.write_feed_rows_ahead)."""

    thread: threading.Thread | None = None
    errors: list[BaseException] = field(default_factory=list)

    def wait(self) -> None:
        """Until every feed's rows are written; a failure to write them is raised here."""
        self.finish()
        if self.errors:
            raise self.errors[0]

    def finish(self) -> None:
        """Until the writing ends, however it ends (a failed run's rows are never used)."""
        if self.thread is not None:
            self.thread.join()


def _log(entries: Sequence[LogEntry]) -> pl.DataFrame:
    """The log's entries in order, one row per product: PUSHED_SCHEMA, quantity null = forgotten.

    Decoded all at once (one split, one concatenation), not as 4,000 Arrow frames (one per
    request of a full sync) one by one.
    """
    if not entries:
        return pl.DataFrame(schema=PUSHED_SCHEMA)
    ids, quantities, row = decode_log([e[3] for e in entries], [e[4] for e in entries])
    return pl.DataFrame(
        {
            "id": ids,
            "quantity": quantities,
            "pushed_at": pl.Series([e[2] for e in entries], dtype=pl.String).gather(row),
            "run": pl.Series([e[1] for e in entries], dtype=pl.String).gather(row),
        },
        schema=PUSHED_SCHEMA,
    )


def fold(snapshot: pl.DataFrame, log: pl.DataFrame) -> pl.DataFrame:
    """The snapshot with the log applied in order: the latest entry per product wins.

    Within one run each product lands once, so the `unique` is skipped when no id repeats,
    and the anti-join when there is no snapshot yet (a first full sync).
    """
    if log.height == 0:
        return snapshot
    repeated = bool(is_duplicated(log["id"]).any())
    latest = log.unique("id", keep="last", maintain_order=True) if repeated else log
    kept = snapshot.join(latest.select("id"), on="id", how="anti") if snapshot.height else snapshot
    return pl.concat([kept, latest.filter(pl.col("quantity").is_not_null())])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
