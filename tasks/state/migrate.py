"""Move one tenant's state to another database: the SQLite state of one machine into PostgreSQL.

The source is read in one transaction (a consistent snapshot); the target is written in one
transaction, so a failed migration leaves the target as it was. A SQLite source from before
tenants is upgraded in a temporary copy: the original stays usable by the older version.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, delete, func, insert, select, union

from tasks.state import schema
from tasks.state.legacy import is_legacy, upgrade_legacy
from tasks.state.location import SQLITE, StateLocation
from tasks.state.lock import LOCK_FILE, lock_file, run_lock
from tasks.state.store import StateStore

BATCH_ROWS = 5000
COPIED_TABLES = tuple(t for t in schema.TENANT_TABLES if t is not schema.run_holders)
RUN_NAME = "migrate-state"


class MigrationRefused(Exception):
    """The migration would lose or mix state; the message says what to do instead."""


@dataclass(frozen=True)
class Migrated:
    """Rows copied per table."""

    rows: dict[str, int]

    def describe(self) -> str:
        return ", ".join(f"{table} {count:,}" for table, count in self.rows.items() if count)


def tenants_in(store: StateStore) -> list[str]:
    """Every tenant with state in the store's database."""
    query = union(*(select(t.c.tenant).distinct() for t in COPIED_TABLES))
    with store.engine.connect() as db:
        return sorted(db.execute(query).scalars())


def row_counts(store: StateStore) -> dict[str, int]:
    """Rows the store's tenant has, per table."""
    with store.engine.connect() as db:
        return {
            t.name: int(
                db.execute(select(func.count()).where(t.c.tenant == store.tenant)).scalar_one()
            )
            for t in COPIED_TABLES
        }


def copy_tenant(source: StateStore, target: StateStore, replace: bool = False) -> Migrated:
    """Copy every row of the source's tenant into the target's tenant, atomically on the target."""
    if sum(row_counts(source).values()) == 0:
        others = ", ".join(tenants_in(source)) or "none"
        raise MigrationRefused(
            f"{source.location} holds no state for tenant {source.tenant!r} "
            f"(tenants there: {others}); nothing was copied"
        )
    existing = sum(row_counts(target).values())
    if existing and not replace:
        raise MigrationRefused(
            f"{target.location} already holds state ({existing:,} rows); nothing was copied. "
            "--replace overwrites it with the source's"
        )
    copied: dict[str, int] = {}
    with source.engine.connect() as reader, target.engine.begin() as writer:
        for table in COPIED_TABLES:
            if replace:
                writer.execute(delete(table).where(table.c.tenant == target.tenant))
            logged = table is schema.pushed_log  # keyed by a sequence: the target numbers it
            query = select(table).where(table.c.tenant == source.tenant)
            result = reader.execution_options(yield_per=BATCH_ROWS).execute(
                query.order_by(table.c.seq) if logged else query
            )
            copied[table.name] = 0
            for batch in result.partitions():
                rows = [dict(row._mapping) | {"tenant": target.tenant} for row in batch]
                if logged:
                    writer.execute(insert(table), [without_seq(row) for row in rows])
                else:
                    schema.upsert_rows(writer, table, rows)
                copied[table.name] += len(rows)
    if row_counts(target) != copied:
        raise MigrationRefused(f"the target's row counts differ from the source's: {copied}")
    return Migrated(copied)


def without_seq(row: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in row.items() if key != "seq"}


@contextmanager
def opened_source(location: StateLocation) -> Iterator[StateStore]:
    """The source store, locked against runs; a pre-tenant SQLite state is upgraded in a copy."""
    if location.dialect != SQLITE:
        store = StateStore(location)
        with store.exclusive(RUN_NAME):
            yield store
        return
    path = location.sqlite_path
    if not path.exists():
        raise MigrationRefused(f"{path}: no state file there; nothing was copied")
    with ExitStack() as held:
        held.enter_context(run_lock(path.parent, f"run {RUN_NAME}"))  # the older version's lock
        if lock_file(location) != path.parent / LOCK_FILE:
            held.enter_context(run_lock(location, f"run {RUN_NAME}"))
        with _readable(location) as store:
            yield store


@contextmanager
def _readable(location: StateLocation) -> Iterator[StateStore]:
    """A SQLite source as a store; one from before tenants through an upgraded temporary copy."""
    path = location.sqlite_path
    probe = create_engine(location.engine_url())
    try:
        with probe.connect() as db:
            legacy = is_legacy(db)
    finally:
        probe.dispose()
    if not legacy:
        yield StateStore(location)
        return
    with tempfile.TemporaryDirectory(prefix="inventory-sync-migrate-") as folder:
        copy = Path(folder) / path.name
        with closing(sqlite3.connect(path)) as old, closing(sqlite3.connect(copy)) as new:
            old.backup(new)
        engine = create_engine(f"sqlite:///{copy}")
        try:
            with engine.begin() as db:
                upgrade_legacy(db, location.tenant, path.parent / "snapshots")
        finally:
            engine.dispose()
        yield StateStore(StateLocation(f"sqlite:///{copy}", location.tenant))
