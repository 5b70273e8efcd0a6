"""Compare the payload with what was last pushed, and send only what changed."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from tasks.reconcile import CATALOG_ROW, planned_rows

SEND_ORDER = ["vendorSku", "id"]  # by SKU, so each chunk covers a readable SKU range
CHANGE_SCHEMA = {
    "id": pl.String,
    "vendorSku": pl.String,
    "quantity": pl.Int64,
    "previous": pl.Int64,
}


@dataclass(frozen=True)
class Changes:
    """The full payload with each product's previous quantity, and the part to send."""

    all: pl.DataFrame  # id, vendorSku, quantity, previous (last pushed, else the platform's)
    to_send: pl.DataFrame  # id, vendorSku, quantity, previous; in SEND_ORDER
    unchanged: int
    full: bool


def plan_changes(
    payload: pl.DataFrame, last_pushed: pl.DataFrame, catalog: pl.DataFrame, full: bool
) -> Changes:
    """Delta against the last pushed quantities; a full run (or an unknown product) sends all.

    The platform's own current quantity is deliberately not a reason to send: it runs down as
    retailers order, and re-sending an unchanged warehouse figure over it would undo those
    sales until the warehouse feed catches up. `previous` is what we last pushed, or, for a
    product we never pushed, what the platform reported (used only by the change guard).
    """
    # `all` in the payload's order (polars keeps no order unasked); `to_send` in SEND_ORDER
    frame = _with_platform_quantity(
        payload.join(last_pushed, on="id", how="left", maintain_order="left"), catalog
    ).with_columns(
        pl.coalesce("last_quantity", "platform_quantity").cast(pl.Int64).alias("previous")
    )
    changed = pl.col("last_quantity").is_null() | (pl.col("last_quantity") != pl.col("quantity"))
    to_send = (frame if full else frame.filter(changed)).sort(SEND_ORDER, nulls_last=True)
    columns = list(CHANGE_SCHEMA)
    return Changes(
        all=frame.select(columns),
        to_send=to_send.select(columns),
        unchanged=frame.height - to_send.height,
        full=full,
    )


def _with_platform_quantity(frame: pl.DataFrame, catalog: pl.DataFrame) -> pl.DataFrame:
    """Each product's platform_quantity, by the catalog row it was planned from if it has one.

    A planned payload names its catalog row (reconcile's CATALOG_ROW): taking that row's
    quantity is a gather, cheaper than a join on a million ids. Only if every row's
    catalog row holds its id (planned_rows); any other payload is joined on id.
    """
    planned = planned_rows(frame, catalog)
    if planned is not None and planned.fill_null(False).all():
        quantity = catalog["platform_quantity"].gather(frame[CATALOG_ROW])
        return frame.with_columns(quantity)
    platform = catalog.select("id", "platform_quantity")
    return frame.join(platform, on="id", how="left", maintain_order="left")


def diff_lines(changes: pl.DataFrame, limit: int) -> list[str]:
    """`SKU (id): old → new` for the first `limit` changes, biggest first."""
    ordered = changes.with_columns(
        (pl.col("quantity") - pl.col("previous").fill_null(0)).abs().alias("size")
    ).sort("size", descending=True)
    return [
        f"{sku} ({pid}): {'—' if prev is None else prev} → {qty}"
        for pid, sku, qty, prev in ordered.head(limit).select(list(CHANGE_SCHEMA)).iter_rows()
    ]
