"""The SQLite state from before tenants (one folder, one supplier, Parquet snapshots) moved into a tenant."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import polars as pl
from sqlalchemy import Connection, inspect, text

from tasks.state.frames import from_blob, log_ids, log_quantities, to_blob
from tasks.state.schema import feed_rows, metadata, pushed_log, pushed_snapshot

# table: its columns before tenants (the one-row tables had a column `one` instead of a key)
LEGACY_COLUMNS = {
    "feeds": "warehouse, modified_at, source, run, recorded_at",
    "catalog": "refreshed_at, products, pages, per_page, frame",
    "catalog_refresh": "started_at, per_page, next_url, pages",
    "catalog_refresh_pages": "page, frame",
    "audited_pages": "page, audited_at, products",
    "marks": "key, value",
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
    snapshot and log of landed requests (later ones) are copied, each log row re-encoded as
    its ids text and quantity bytes (see tasks.state.frames). The last good feeds, Parquet
    files under `snapshots/`, become rows of feed_rows; the files are left where they are.
    Returns whether there was anything to upgrade.
    """
    if not is_legacy(connection):
        return False
    present = set(inspect(connection).get_table_names())
    pushed_tables = ["pushed", "pushed_snapshot", "pushed_log"]
    old = [name for name in [*LEGACY_COLUMNS, *pushed_tables] if name in present]
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
    if "pushed_snapshot" in old:
        _snapshot_with_its_size(connection, tenant)
    elif "pushed" in old:
        _rows_to_snapshot(connection, tenant)
    if "pushed_log" in old:
        _log_as_text_and_bytes(connection, tenant)
    _snapshots_to_rows(connection, tenant, snapshots)
    for name in old:
        connection.execute(text(f"DROP TABLE legacy_{name}"))
    return True


def _snapshot_with_its_size(connection: Connection, tenant: str) -> None:
    """The snapshot of pushed quantities as it was, with the count of its products beside it."""
    row = connection.execute(text("SELECT folded_at, frame FROM legacy_pushed_snapshot")).first()
    if row is not None:
        folded_at, frame = row
        products = from_blob(frame, ["id"]).height
        connection.execute(
            pushed_snapshot.insert(),
            {"tenant": tenant, "folded_at": folded_at, "products": products, "frame": frame},
        )


def _log_as_text_and_bytes(connection: Connection, tenant: str) -> None:
    """Each row of the old log (an Arrow frame of id, quantity) as ids text and quantity bytes.

    In order. A request recorded with no product adds nothing and is dropped; quantities an
    old row left null (a forget's are all null) become a forget row of their own after it.
    A log the single-tenant version already kept as text and bytes is copied as it is.
    """
    if "ids" in {c["name"] for c in inspect(connection).get_columns("legacy_pushed_log")}:
        connection.execute(
            text(
                "INSERT INTO pushed_log (tenant, run, at, products, ids, quantities) "
                "SELECT :t, run, at, products, ids, quantities FROM legacy_pushed_log ORDER BY seq"
            ),
            {"t": tenant},
        )
        return
    entries = connection.execute(
        text("SELECT run, at, forgotten, frame FROM legacy_pushed_log ORDER BY seq")
    ).fetchall()
    rows: list[dict[str, object]] = []
    for run, at, forgotten, blob in entries:
        frame = from_blob(blob, ["id", "quantity"])
        if forgotten:
            frame = frame.with_columns(pl.lit(None, pl.Int64).alias("quantity"))
        landed = frame.filter(pl.col("quantity").is_not_null())
        dropped = frame.filter(pl.col("quantity").is_null())
        for part, quantities in ((landed, True), (dropped, False)):
            if part.height:
                rows.append(
                    {
                        "tenant": tenant,
                        "run": run,
                        "at": at,
                        "products": part.height,
                        "ids": log_ids(part["id"]),
                        "quantities": log_quantities(part["quantity"]) if quantities else None,
                    }
                )
    if rows:
        connection.execute(pushed_log.insert(), rows)


def _rows_to_snapshot(connection: Connection, tenant: str) -> None:
    """The first versions' row-per-product table as the tenant's snapshot of pushed quantities."""
    rows = connection.execute(
        text("SELECT product_id, quantity, pushed_at, run FROM legacy_pushed")
    ).fetchall()
    if rows:
        frame = pl.DataFrame([tuple(r) for r in rows], schema=PUSHED_ROWS, orient="row")
        connection.execute(
            pushed_snapshot.insert(),
            {
                "tenant": tenant,
                "folded_at": "before tenants",
                "products": frame.height,
                "frame": to_blob(frame),
            },
        )


def _snapshots_to_rows(connection: Connection, tenant: str, snapshots: Path) -> None:
    """Each warehouse's last good feed, a Parquet file before tenants, as a row of feed_rows."""
    warehouses = connection.execute(
        text("SELECT warehouse, run FROM feeds WHERE tenant = :t"), {"t": tenant}
    ).fetchall()
    for warehouse, run in warehouses:
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
                "run": run,
                "first_line": first_line,
                "frame": to_blob(rows.select(FEED_TEXTS)),
            },
        )


def snapshot_file_name(warehouse: str) -> str:
    """The Parquet file a warehouse's last good feed was kept in, before tenants."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", warehouse)[:40]
    digest = hashlib.sha1(warehouse.encode()).hexdigest()[:8]
    return f"{safe}-{digest}.parquet"
