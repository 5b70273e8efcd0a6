"""The SQLite state from before tenants (one folder, one supplier, Parquet snapshots) moved into a tenant."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import polars as pl
from sqlalchemy import Connection, inspect, text

from tasks.state.frames import to_blob
from tasks.state.schema import feed_rows, metadata, pushed_snapshot

# table: its columns before tenants (the one-row tables had a column `one` instead of a key)
LEGACY_COLUMNS = {
    "feeds": "warehouse, modified_at, source, run, recorded_at",
    "catalog": "refreshed_at, products, pages, per_page, frame",
    "catalog_refresh": "started_at, per_page, next_url, pages",
    "catalog_refresh_pages": "page, frame",
    "audited_pages": "page, audited_at, products",
    "marks": "key, value",
    "pushed_snapshot": "folded_at, frame",
}
PUSHED_ROWS = {"id": pl.String, "quantity": pl.Int64, "pushed_at": pl.String, "run": pl.String}
FIRST_LINE = "first_line"  # in a snapshot's Parquet metadata: the line of its first row
FEED_TEXTS = ["sku_text", "quantity_text"]


def is_legacy(connection: Connection) -> bool:
    """Whether this SQLite database holds a schema from before tenants."""
    tables = inspect(connection).get_table_names()
    if "pushed" in tables:
        return True  # every version before tenants had it; this one has none
    return "feeds" in tables and "tenant" not in {
        c["name"] for c in inspect(connection).get_columns("feeds")
    }


def upgrade_legacy(connection: Connection, tenant: str, snapshots: Path) -> bool:
    """In the caller's transaction: copy every old table into the new schema under `tenant`.

    Pushed quantities kept row by row (the first versions) become the tenant's snapshot; a
    snapshot and log of landed requests (later ones) are copied as they are. The last good
    feeds, Parquet files under `snapshots/`, become rows of feed_rows; the files are left
    where they are. Returns whether there was anything to upgrade.
    """
    if not is_legacy(connection):
        return False
    present = set(inspect(connection).get_table_names())
    old = [name for name in [*LEGACY_COLUMNS, "pushed", "pushed_log"] if name in present]
    for name in old:
        connection.execute(text(f"ALTER TABLE {name} RENAME TO legacy_{name}"))
    for index in ("pushed_log_tenant",):  # a name the new schema takes
        connection.execute(text(f"DROP INDEX IF EXISTS {index}"))
    metadata.create_all(connection)
    for name, columns in LEGACY_COLUMNS.items():
        if name in old:
            connection.execute(
                text(
                    f"INSERT INTO {name} (tenant, {columns}) SELECT :t, {columns} FROM legacy_{name}"
                ),
                {"t": tenant},
            )
    if "pushed_log" in old:
        connection.execute(
            text(
                "INSERT INTO pushed_log (tenant, run, at, forgotten, frame) "
                "SELECT :t, run, at, forgotten, frame FROM legacy_pushed_log ORDER BY seq"
            ),
            {"t": tenant},
        )
    if "pushed" in old and "pushed_snapshot" not in old:
        _rows_to_snapshot(connection, tenant)
    _snapshots_to_rows(connection, tenant, snapshots)
    for name in old:
        connection.execute(text(f"DROP TABLE legacy_{name}"))
    return True


def _rows_to_snapshot(connection: Connection, tenant: str) -> None:
    """The first versions' row-per-product table as the tenant's snapshot of pushed quantities."""
    rows = connection.execute(
        text("SELECT product_id, quantity, pushed_at, run FROM legacy_pushed")
    ).fetchall()
    if rows:
        frame = pl.DataFrame([tuple(r) for r in rows], schema=PUSHED_ROWS, orient="row")
        connection.execute(
            pushed_snapshot.insert(),
            {"tenant": tenant, "folded_at": "before tenants", "frame": to_blob(frame)},
        )


def _snapshots_to_rows(connection: Connection, tenant: str, snapshots: Path) -> None:
    """Each warehouse's last good feed, a Parquet file before, as a row of feed_rows."""
    warehouses = connection.execute(
        text("SELECT warehouse FROM feeds WHERE tenant = :t"), {"t": tenant}
    ).fetchall()
    for (warehouse,) in warehouses:
        path = snapshots / snapshot_file_name(warehouse)
        if not path.exists():
            continue
        rows = pl.read_parquet(path)
        written = pl.read_parquet_metadata(path).get(FIRST_LINE)
        if written is not None:
            first_line = int(written)
        else:  # written when feeds kept a line number per row
            first_line = int(rows["line"][0]) if rows.height and "line" in rows.columns else 1
        connection.execute(
            feed_rows.insert(),
            {
                "tenant": tenant,
                "warehouse": warehouse,
                "first_line": first_line,
                "frame": to_blob(rows.select(FEED_TEXTS)),
            },
        )


def snapshot_file_name(warehouse: str) -> str:
    """The Parquet file a warehouse's last good feed was kept in, before tenants."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", warehouse)[:40]
    digest = hashlib.sha1(warehouse.encode()).hexdigest()[:8]
    return f"{safe}-{digest}.parquet"
