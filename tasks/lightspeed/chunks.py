"""How a payload is cut for the load: chunks (a task run each), requests (a PUT each), bodies."""

from __future__ import annotations

import math
from collections.abc import Sequence

import orjson
import polars as pl

from tasks.config.settings import LightspeedSettings

# A task run costs the Prefect server (and the client) far more than a request does, on the
# cores the sync runs on; the default chunk keeps a run to at most this many task runs, whatever
# its size. A chunk retries only the requests that did not land, so a bigger chunk costs a
# retry nothing.
MAX_TASK_RUNS = 50


def chunk_size_for(products: int, settings: LightspeedSettings) -> int:
    """Products per chunk: lightspeed.chunk_size if set, else whole requests, ≤ MAX_TASK_RUNS chunks.

    At least max_concurrency requests each, so that one chunk can fill the request slots: a
    2 % cycle of 20,000 products is 10 task runs of 4 PUTs, not 40 of one, which would leave
    half the slots idle (two chunks in flight) and pay a task run's cost 40 times.
    """
    if settings.chunk_size is not None:
        return settings.chunk_size
    requests = math.ceil(products / settings.request_size)
    per_chunk = max(1, settings.max_concurrency, math.ceil(requests / MAX_TASK_RUNS))
    return settings.request_size * per_chunk


def split_into_chunks(payload: pl.DataFrame, size: int) -> list[pl.DataFrame]:
    """Consecutive slices of at most `size` products (zero-copy)."""
    return [payload.slice(start, size) for start in range(0, payload.height, size)]


def plan_requests(chunk: pl.DataFrame, request_size: int) -> list[pl.DataFrame]:
    """The PUTs a chunk is sent in: consecutive slices of at most request_size products."""
    return split_into_chunks(chunk, request_size)


def unlanded(requests: Sequence[pl.DataFrame], landed: set[str]) -> dict[int, pl.DataFrame]:
    """Request number (from 1) → its products not yet landed, for the requests with any left."""
    if not landed:
        return dict(enumerate(requests, start=1))
    done = pl.Series(list(landed), dtype=pl.String).implode()
    left = {n: r.filter(~pl.col("id").is_in(done)) for n, r in enumerate(requests, start=1)}
    return {n: r for n, r in left.items() if r.height}


def sku_range(products: pl.DataFrame) -> str:
    """`SKU-A…SKU-K (500 products)`: what a chunk or request covers, for names and logs."""
    first, last = products["vendorSku"][0], products["vendorSku"][-1]
    return f"{first}…{last} ({products.height} products)"


def chunk_label(number: int, total: int, chunk: pl.DataFrame) -> str:
    """What a user sees as the task run's name: position, SKU range and size."""
    return f"{number}/{total} {sku_range(chunk)}"


def chunk_body(chunk: pl.DataFrame) -> bytes:
    """The PUT body: {"products": [{"id": ..., "quantity": ...}, ...]}.

    orjson over the two columns as lists: faster than polars' write_json, all the more with a
    load's request threads sharing polars' pool.
    """
    ids, quantities = chunk["id"].to_list(), chunk["quantity"].to_list()
    products = [{"id": i, "quantity": q} for i, q in zip(ids, quantities, strict=True)]
    return orjson.dumps({"products": products})
