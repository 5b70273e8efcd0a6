"""Compare the payload with what was last pushed, and send only what changed."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

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
    to_send: pl.DataFrame  # id, vendorSku, quantity, previous
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
    platform = catalog.select("id", pl.col("platform_quantity"))
    frame = (
        # the payload's order (by SKU) makes the chunks' SKU ranges; polars keeps no order unasked
        payload.join(last_pushed, on="id", how="left", maintain_order="left")
        .join(platform, on="id", how="left", maintain_order="left")
        .with_columns(
            pl.coalesce("last_quantity", "platform_quantity").cast(pl.Int64).alias("previous")
        )
    )
    changed = pl.col("last_quantity").is_null() | (pl.col("last_quantity") != pl.col("quantity"))
    to_send = frame if full else frame.filter(changed)
    columns = list(CHANGE_SCHEMA)
    return Changes(
        all=frame.select(columns),
        to_send=to_send.select(columns),
        unchanged=frame.height - to_send.height,
        full=full,
    )


def diff_lines(changes: pl.DataFrame, limit: int) -> list[str]:
    """`SKU (id): old → new` for the first `limit` changes, biggest first."""
    ordered = changes.with_columns(
        (pl.col("quantity") - pl.col("previous").fill_null(0)).abs().alias("size")
    ).sort("size", descending=True)
    return [
        f"{sku} ({pid}): {'—' if prev is None else prev} → {qty}"
        for pid, sku, qty, prev in ordered.head(limit).select(list(CHANGE_SCHEMA)).iter_rows()
    ]
