"""The state's one schema, for SQLite and PostgreSQL alike: every primary key starts with the tenant."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    bindparam,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.dml import Insert

metadata = MetaData()


def _tenant() -> Column[str]:
    return Column("tenant", Text, primary_key=True)


pushed_snapshot = Table(  # every product's last pushed quantity (Arrow IPC), as of the last fold
    "pushed_snapshot",
    metadata,
    _tenant(),
    Column("folded_at", Text, nullable=False),
    Column("products", Integer, nullable=False),  # the frame's rows: what a fold compares with
    Column("frame", LargeBinary, nullable=False),
)
# What landed since, one row per accepted request (or one forget). Not an Arrow frame per row:
# a full sync of 1M products logs 4,000 requests, too many frames to decode one by one at fold
# time; a text and a byte string per row are decoded all at once (tasks.state.frames).
pushed_log = Table(
    "pushed_log",
    metadata,
    # one sequence for all tenants (an autoincrement key cannot be composite on SQLite); the
    # order within a tenant is what matters, and (tenant, seq) is indexed
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("tenant", Text, nullable=False),
    Column("run", Text, nullable=False),
    Column("at", Text, nullable=False),
    Column("products", Integer, nullable=False),
    Column("ids", Text, nullable=False),  # the products, one per line
    Column("quantities", LargeBinary),  # their quantities as little-endian int64; NULL: forgotten
    Index("pushed_log_tenant", "tenant", "seq"),
)
feeds = Table(  # the feed each warehouse supplied to the last successful run
    "feeds",
    metadata,
    _tenant(),
    Column("warehouse", Text, primary_key=True),
    Column("modified_at", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("run", Text, nullable=False),
    Column("recorded_at", Text, nullable=False),
)
feed_rows = Table(  # that feed's rows (Arrow IPC), for a later run that cannot read the warehouse
    "feed_rows",
    metadata,
    _tenant(),
    Column("warehouse", Text, primary_key=True),
    # the run that wrote them: the rows are current where feeds.run names that run; a run
    # writes its rows while it loads, and only its mark makes them current (see the store)
    Column("run", Text, primary_key=True),
    Column("first_line", Integer, nullable=False),  # the line (or record) of its first row
    Column("frame", LargeBinary, nullable=False),
)
catalog = Table(  # the catalog of the last complete refresh (Arrow IPC)
    "catalog",
    metadata,
    _tenant(),
    Column("refreshed_at", Text, nullable=False),
    Column("products", Integer, nullable=False),
    Column("pages", Integer, nullable=False),
    Column("per_page", Integer, nullable=False),
    Column("frame", LargeBinary, nullable=False),
)
catalog_refresh = Table(  # a refresh under way
    "catalog_refresh",
    metadata,
    _tenant(),
    Column("started_at", Text, nullable=False),
    Column("per_page", Integer, nullable=False),
    Column("next_url", Text),
    Column("pages", Integer, nullable=False),
)
catalog_refresh_pages = Table(
    "catalog_refresh_pages",
    metadata,
    _tenant(),
    Column("page", Integer, primary_key=True),
    Column("frame", LargeBinary, nullable=False),
)
audited_pages = Table(
    "audited_pages",
    metadata,
    _tenant(),
    Column("page", Integer, primary_key=True),
    Column("audited_at", Text, nullable=False),
    Column("products", Integer, nullable=False),
)
marks = Table(
    "marks",
    metadata,
    _tenant(),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
run_holders = Table(  # who holds a tenant's run lock, for the message a refused run prints
    "run_holders",
    metadata,
    _tenant(),
    Column("holder", Text, nullable=False),
    Column("since", Text, nullable=False),
)

refresh_tokens = Table(  # an API account's newest OAuth refresh token, Fernet-encrypted
    "refresh_tokens",
    metadata,
    # keyed by account, not tenant: every configuration on one account shares its one token
    Column("account", Text, primary_key=True),
    Column("generation", Integer, nullable=False),  # +1 each time a new one is stored
    Column("token", LargeBinary, nullable=False),  # the Fernet token of the refresh token
    Column("stored_at", Text, nullable=False),
    Column("stored_by", Text, nullable=False),
    # set while a refresh of this generation is under way: the server may have rotated it
    # even if the answer never came back (a process killed, a connection lost)
    Column("refreshing", Text),
    Column("rejected", Text),  # the token endpoint refused this generation: why
)

# the tables whose rows belong to one tenant (a migration copies those); a refresh token is not
# copied: it lives in exactly one database, or two copies would revoke each other
TENANT_TABLES = tuple(t for t in metadata.sorted_tables if "tenant" in t.c)


@cache
def upsert(dialect: str, table: Table) -> Insert:
    """INSERT … ON CONFLICT (primary key) DO UPDATE every other column, in the dialect's words."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return _on_conflict_update(insert(table), table)


@cache
def upsert_arrays(table: Table) -> Insert:
    """PostgreSQL: the same upsert of many rows at once, each column bound as one array.

    One statement instead of one per row, so a request's rows cost one round trip.
    """
    names = [c.name for c in table.columns]
    arrays = [
        func.unnest(bindparam(c.name, type_=ARRAY(c.type))).label(c.name) for c in table.columns
    ]
    return _on_conflict_update(postgresql.insert(table).from_select(names, select(*arrays)), table)


def upsert_rows(connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or replace rows by primary key (a key given twice: the last row wins)."""
    keys = [c.name for c in table.primary_key.columns]
    unique = list({tuple(row[k] for k in keys): row for row in rows}.values())
    if not unique:
        return
    dialect = connection.dialect.name
    if dialect == "postgresql" and len(unique) > 1:
        columns = {c.name: [row[c.name] for row in unique] for c in table.columns}
        connection.execute(upsert_arrays(table), columns)
    else:
        connection.execute(upsert(dialect, table), unique)


def _on_conflict_update(statement: Any, table: Table) -> Insert:
    keys = [c.name for c in table.primary_key.columns]
    others = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    return cast(Insert, statement.on_conflict_do_update(index_elements=keys, set_=others))
