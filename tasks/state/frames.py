"""How frames are kept in the database.

Whole frames (snapshots, feeds, catalogs) as Arrow IPC bytes, read back whole. A row of the
log of landed requests as two plain values instead, its ids as one newline-joined text and its
quantities as little-endian int64 bytes (NULL for a forget): a full sync logs 4,000 requests,
and decoding 4,000 Arrow frames one by one is slow, where all the log's rows decode at once
(one split, one concatenation).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import polars as pl

LOG_ID_SEPARATOR = "\n"
LOG_QUANTITY = "<i8"


def to_blob(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_ipc(buffer, compression="lz4")
    return buffer.getvalue()


def from_blob(blob: bytes, columns: list[str] | None = None) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(blob), columns=columns)


def log_ids(ids: pl.Series) -> str:
    """A log row's products, one per line (none may be null or hold a line break).

    Joined in Python: for a request's few hundred ids, cheaper than a polars expression
    (all the more with a load's request threads sharing polars' pool).
    """
    text = "" if ids.null_count() else LOG_ID_SEPARATOR.join(ids.to_list())
    if ids.null_count() or text.count(LOG_ID_SEPARATOR) != max(ids.len() - 1, 0):
        raise ValueError("a product id in the state log is null or holds a line break")
    return text


def log_quantities(quantities: pl.Series) -> bytes:
    """A log row's quantities, in the order of its ids (none may be null)."""
    if quantities.null_count():
        raise ValueError("a quantity in the state log is null (a forget is a row of its own)")
    return bytes(quantities.cast(pl.Int64).to_numpy().astype(LOG_QUANTITY).tobytes())


def decode_log(
    ids: Sequence[str], quantities: Sequence[bytes | None]
) -> tuple[pl.Series, pl.Series, np.ndarray]:
    """Log rows' (id, quantity) pairs in order, and the row each pair came from.

    quantity is null for the products of a forget (a row whose quantities are NULL).
    """
    if not ids:
        empty = pl.Series("id", [], dtype=pl.String), pl.Series("quantity", [], dtype=pl.Int64)
        return *empty, np.zeros(0, dtype=np.int64)
    split = split_log_ids(ids)
    counts = split.list.len().to_numpy()
    values = np.concatenate(
        [
            np.frombuffer(q, dtype=LOG_QUANTITY) if q is not None else np.zeros(n, LOG_QUANTITY)
            for q, n in zip(quantities, counts, strict=True)
        ]
    )
    row = np.repeat(np.arange(len(counts)), counts)
    if values.size != row.size:
        raise ValueError("a row of the state log has fewer or more quantities than products")
    forgotten = np.array([q is None for q in quantities], dtype=bool)[row]
    quantity = pl.Series("quantity", values, dtype=pl.Int64)
    if forgotten.any():
        quantity = quantity.set(pl.Series(forgotten), None)
    return split.explode(), quantity, row


def split_log_ids(ids: Sequence[str]) -> pl.Series:
    """Log rows' ids texts as one list of products per row."""
    return pl.Series("id", list(ids), dtype=pl.String).str.split(LOG_ID_SEPARATOR)
