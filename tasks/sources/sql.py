"""SQL databases (SQLite, PostgreSQL): a query's SKU and quantity columns, read straight into polars."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import polars as pl
import sqlalchemy
from pydantic import Field, SecretStr
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from tasks.config.secrets import SecretRef
from tasks.sources.feed import (
    QUERY_WORDING,
    Feed,
    SourceKind,
    WarehouseUnavailable,
    WarehouseUnreadable,
    feed_frame,
)
from tasks.sources.warehouse import RemoteWarehouse

# PostgreSQL error classes worth a retry: connection exception, insufficient resources,
# operator intervention (server shutting down), transaction rollback (serialization, deadlock).
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "40"})
TRANSIENT_SQLITE_ERRORS = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})
# A refusal at connection time comes without an SQLSTATE; these ones pass by themselves.
POSTGRES_BUSY = ("starting up", "shutting down", "too many clients", "connection slots")


class SqlWarehouse(RemoteWarehouse):
    kind: Literal["sql"]
    url: SecretRef = Field(description="SQLAlchemy URL, e.g. postgresql://user:pw@host/db")
    query: str = Field(min_length=1, description="returns the SKU and quantity columns")


def read_sql_feed(warehouse: SqlWarehouse, secrets: Mapping[str, SecretStr]) -> Feed:
    """Run the query read-only; every SKU and quantity value as text, NULL kept as null."""
    secret = secrets["url"]
    url = _url(warehouse, secret)
    source = url.render_as_string(hide_password=True)
    try:
        engine = sqlalchemy.create_engine(_engine_url(warehouse, url), poolclass=NullPool)
    except (ArgumentError, ImportError) as exc:
        raise WarehouseUnreadable(
            warehouse.name, f"{source}: no database driver for {url.drivername!r} ({exc})"
        ) from None
    columns = (warehouse.sku_column, warehouse.quantity_column)
    try:
        with engine.connect() as connection:
            if url.get_backend_name() == "postgresql":
                connection = connection.execution_options(postgresql_readonly=True)
            frame = pl.read_database(
                sqlalchemy.text(warehouse.query.replace(":", "\\:")),  # no bind parameters
                connection=connection,
                schema_overrides=dict.fromkeys(columns, pl.String),
                infer_schema_length=None,
            )
    except DBAPIError as exc:
        raise _failure(warehouse, source, exc, secret) from None
    except (SQLAlchemyError, pl.exceptions.PolarsError) as exc:
        raise WarehouseUnreadable(
            warehouse.name, f"{source}: {_masked(str(exc).splitlines()[0], secret)}"
        ) from None
    finally:
        engine.dispose()
    feed = feed_frame(
        warehouse, source, frame, 0, datetime.now(UTC), first_line=1, wording=QUERY_WORDING
    )
    # a database reports no transfer size: count the bytes of the values read, as text
    size = feed.rows.select(
        pl.sum_horizontal(pl.col("sku_text", "quantity_text").str.len_bytes().sum())
    ).item()
    return replace(feed, bytes_read=int(size or 0))


def _url(warehouse: SqlWarehouse, secret: SecretStr) -> URL:
    try:
        url = make_url(secret.get_secret_value())
    except ArgumentError:
        raise WarehouseUnreadable(
            warehouse.name, "url is not a database URL (e.g. postgresql://user:pw@host/db)"
        ) from None
    return url


def _engine_url(warehouse: SqlWarehouse, url: URL) -> URL:
    """psycopg 3 for postgresql://; SQLite opened read-only, and never created when missing."""
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg")  # the driver installed with this project
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return url
    path = Path(str(url.database))
    if not path.is_file():
        raise WarehouseUnreadable(
            warehouse.name, f"{url.render_as_string()}: no SQLite database file at {path}"
        )
    return url.set(database=path.resolve().as_uri(), query={"mode": "ro", "uri": "true"})


def _failure(
    warehouse: SqlWarehouse, source: str, exc: DBAPIError, secret: SecretStr
) -> WarehouseUnreadable:
    """The database's own message, one line; a retryable error for what may pass."""
    message = " ".join(str(exc.orig).split()) or type(exc.orig).__name__
    kind = WarehouseUnavailable if _transient(exc, message) else WarehouseUnreadable
    return kind(warehouse.name, f"{source}: {_masked(message, secret)}")


def _transient(exc: DBAPIError, message: str) -> bool:
    """Connection trouble, a busy or restarting server, a deadlock: worth another attempt."""
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate:
        return str(sqlstate)[:2] in TRANSIENT_SQLSTATE_CLASSES
    sqlite_error = getattr(exc.orig, "sqlite_errorname", None)
    if sqlite_error:
        return sqlite_error in TRANSIENT_SQLITE_ERRORS
    if "FATAL:" in message:  # libpq: the server refused the connection, and says why
        return any(phrase in message for phrase in POSTGRES_BUSY)
    return isinstance(exc, OperationalError)  # never reached the server


def _masked(message: str, secret: SecretStr) -> str:
    """Never echo a password, even if a driver puts it in its message."""
    password = make_url(secret.get_secret_value()).password
    return message.replace(password, "***") if password else message


KIND = SourceKind("sql", SqlWarehouse, read_sql_feed)
