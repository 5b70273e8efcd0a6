"""SQL warehouses against SQLite files and a real PostgreSQL server: values as text, errors named."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from tasks.sources.feed import WarehouseUnavailable, WarehouseUnreadable
from tasks.sources.sql import SqlWarehouse, read_sql_feed

QUERY = "SELECT sku, qty FROM stock ORDER BY id"


def warehouse(**extra: object) -> SqlWarehouse:
    fields: dict[str, object] = {
        "name": "south",
        "kind": "sql",
        "url": {"env": "SOUTH_DB_URL"},
        "query": QUERY,
        "sku_column": "sku",
        "quantity_column": "qty",
        "timeout_seconds": 5,
    }
    return SqlWarehouse.model_validate(fields | extra)


def url(value: str) -> dict[str, SecretStr]:
    return {"url": SecretStr(value)}


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    """SQLite is typed per value: numbers, text, a fraction and NULLs in one column."""
    path = tmp_path / "south.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE stock (id INTEGER PRIMARY KEY, sku TEXT, qty)")
        db.executemany(
            "INSERT INTO stock (sku, qty) VALUES (?, ?)",
            [("A", 5), ("B", None), ("C", "7"), ("D", 2.5), ("E", "n/a"), (None, 3)],
        )
    db.close()
    return path


def test_sqlite_values_come_as_text_and_null_stays_null(sqlite_db):
    feed = read_sql_feed(warehouse(), url(f"sqlite:///{sqlite_db}"))
    assert feed.numbered().select("line", "sku_text", "quantity_text").rows() == [
        (1, "A", "5"),
        (2, "B", None),  # the checks flag it "missing quantity" and hold B
        (3, "C", "7"),
        (4, "D", "2.5"),
        (5, "E", "n/a"),
        (6, None, "3"),
    ]
    assert feed.source == f"sqlite:///{sqlite_db}"
    assert feed.bytes_read == len("A5BC7D2.5En/a3")  # the values read, as text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT sku, qty FROM stok", "no such table: stok"),
        (
            "SELECT sku, qty AS quantity FROM stock",
            "returns no column 'qty'; it returns 'sku', 'quantity'",
        ),
        ("SELECT sku, qty FROM stock WHERE 0", "returned no rows; .*allow_empty = true"),
        ("DELETE FROM stock RETURNING sku, qty", "attempt to write a readonly database"),
        ("SELECT sku, qty, qty FROM stock", "column 'qty' appears more than once"),
        (
            'SELECT sku, qty, qty AS "QTY" FROM stock',
            "quantity_column 'qty' is ambiguous: 2 columns match it when case and surrounding "
            "spaces are ignored: 'qty' \\(column 2\\), 'QTY' \\(column 3\\)",
        ),
    ],
)
def test_sqlite_query_problems_name_the_cause(sqlite_db, query, message):
    with pytest.raises(WarehouseUnreadable, match=message) as info:
        read_sql_feed(warehouse(query=query), url(f"sqlite:///{sqlite_db}"))
    assert not isinstance(info.value, WarehouseUnavailable)
    assert str(info.value).startswith(f"warehouse 'south': sqlite:///{sqlite_db}: ")
    assert read_sql_feed(warehouse(), url(f"sqlite:///{sqlite_db}")).rows.height == 6


def test_a_missing_sqlite_file_is_not_created(tmp_path):
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(WarehouseUnreadable, match="no SQLite database file at"):
        read_sql_feed(warehouse(), url(f"sqlite:///{missing}"))
    assert not missing.exists()


@pytest.fixture(scope="module")
def pg_url(postgres) -> str:
    """A PostgreSQL database with integer, numeric and NULL quantities."""
    database_url = postgres.create_database("south_stock")
    with psycopg.connect(database_url) as db:
        db.execute("CREATE TABLE stock (id serial PRIMARY KEY, sku text, qty integer)")
        db.execute("CREATE TABLE counted (sku text, qty numeric(10, 2))")
        db.execute(
            "INSERT INTO stock (sku, qty) VALUES ('A', 5), ('B', NULL), ('SÜSS', -2), ('D', NULL)"
        )
        db.execute("INSERT INTO counted VALUES ('A', 4.00), ('B', 2.50)")
    return database_url


def test_postgres_integers_numerics_and_nulls(pg_url):
    feed = read_sql_feed(warehouse(), url(pg_url))
    assert feed.rows.select("sku_text", "quantity_text").rows() == [
        ("A", "5"),
        ("B", None),
        ("SÜSS", "-2"),
        ("D", None),
    ]
    counted = read_sql_feed(
        warehouse(query="SELECT sku, qty FROM counted ORDER BY sku"), url(pg_url)
    )
    assert counted.rows["quantity_text"].to_list() == ["4.00", "2.50"]  # the checks decide


def test_the_query_is_sent_as_written(pg_url):
    query = """
        SELECT sku, qty::text AS qty FROM stock  -- colons are not bind :parameters
        WHERE sku LIKE 'A%' OR sku = 'x:y' ORDER BY id
    """
    assert read_sql_feed(warehouse(query=query), url(pg_url)).rows["sku_text"].to_list() == ["A"]


def test_postgres_runs_the_query_read_only(pg_url):
    with pytest.raises(
        WarehouseUnreadable, match="cannot execute DELETE in a read-only transaction"
    ):
        read_sql_feed(warehouse(query="DELETE FROM stock RETURNING sku, qty"), url(pg_url))
    assert read_sql_feed(warehouse(), url(pg_url)).rows.height == 4


def test_postgres_password_is_masked_everywhere(pg_url):
    with_password = pg_url.replace("postgres@", "postgres:hunter2@")
    feed = read_sql_feed(warehouse(), url(with_password))
    assert "hunter2" not in feed.source and "postgres:***@" in feed.source
    with pytest.raises(WarehouseUnreadable) as info:
        read_sql_feed(warehouse(query="SELECT sku, qty FROM stok"), url(with_password))
    assert 'relation "stok" does not exist' in str(info.value)
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value)


def test_postgres_errors_that_retrying_cannot_fix_and_ones_it_can(postgres, pg_url):
    with pytest.raises(WarehouseUnreadable) as info:
        read_sql_feed(warehouse(), url(postgres.url("no_such_db")))
    assert not isinstance(info.value, WarehouseUnavailable)
    assert 'database "no_such_db" does not exist' in str(info.value)
    with pytest.raises(WarehouseUnavailable, match="Connection refused|connection failed"):
        read_sql_feed(warehouse(), url("postgresql://postgres@127.0.0.1:1/x"))
