"""Chunked PUT /inventory, one Prefect task run per chunk, retried only when it can help."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import cast
from uuid import UUID

import polars as pl
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import task_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import SecretStr

from tasks.config.settings import LightspeedSettings
from tasks.lightspeed.client import (
    FatalError,
    ItemsRejected,
    LightspeedClient,
    LightspeedError,
    RetryableError,
    TooLarge,
    Unauthorized,
    close_shared_clients,
    retry_policy,
    shared_client,
)
from tasks.progress import current as current_progress
from tasks.state import StateStore

PROGRESS_KEY = "load-progress"
LOAD_STAGE = "load"  # its counts, for the CLI's progress display
# Each update is a blocking round trip to the Prefect server; per chunk, it took 27 of the
# 32 ms a chunk cost, so the bar moves at most once a second (and always at the end).
PROGRESS_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class ChunkResult:
    """A chunk the API accepted (all but the products it rejected), and after how many attempts."""

    number: int
    label: str
    products: int  # accepted
    attempts: int
    requests: int
    rejected: dict[str, str] = field(default_factory=dict)  # id -> the API's reason


@dataclass(frozen=True)
class ChunkFailure:
    """A chunk that finally failed: why, after how many attempts, and what did not land."""

    number: int
    label: str
    error: str
    status: int | None
    attempts: int
    products: pl.DataFrame  # id, vendorSku, quantity
    stops_load: bool = False  # the token was refused: no further chunk can land

    def without(self, landed: set[str]) -> ChunkFailure:
        """The same failure, less the products an earlier attempt did land (after a split)."""
        if not landed:
            return self
        return replace(self, products=self.products.filter(~pl.col("id").is_in(list(landed))))


@dataclass
class LoadOutcome:
    chunks: int = 0
    accepted: list[ChunkResult] = field(default_factory=list)
    failed: list[ChunkFailure] = field(default_factory=list)
    waited_seconds: float = 0.0  # for room in the platform's rate-limit bucket

    @property
    def products_sent(self) -> int:
        return sum(c.products for c in self.accepted)

    @property
    def products_failed(self) -> int:
        return sum(f.products.height for f in self.failed)

    @property
    def not_landed_ids(self) -> set[str]:
        """Products of failed chunks, and products the API rejected."""
        failed = {pid for f in self.failed for pid in f.products["id"]}
        return failed | set(self.rejected)

    @property
    def rejected(self) -> dict[str, str]:
        return {pid: why for c in self.accepted for pid, why in c.rejected.items()}

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.accepted)

    @property
    def attempts(self) -> int:
        return sum(c.attempts for c in self.accepted) + sum(f.attempts for f in self.failed)


def split_into_chunks(payload: pl.DataFrame, size: int) -> list[pl.DataFrame]:
    """Consecutive slices of at most `size` products (zero-copy)."""
    return [payload.slice(start, size) for start in range(0, payload.height, size)]


def chunk_label(number: int, total: int, chunk: pl.DataFrame) -> str:
    """What a user sees as the task run's name: position, SKU range and size."""
    first, last = chunk["vendorSku"][0], chunk["vendorSku"][-1]
    return f"{number}/{total} {first}…{last} ({chunk.height} products)"


def chunk_body(chunk: pl.DataFrame) -> bytes:
    """The PUT body: {"products": [{"id": ..., "quantity": ...}, ...]}."""
    rows = chunk.select("id", "quantity").write_json()
    return b'{"products":' + rows.encode() + b"}"


def send_isolating(
    client: LightspeedClient, chunk: pl.DataFrame, on_accepted: Callable[[pl.DataFrame], None]
) -> tuple[int, dict[str, str], int]:
    """PUT a chunk so that one bad item never blocks the rest.

    413: split in halves and send each. 422: drop the ids the response names and resend the
    rest; when it names none, split until the bad items stand alone. If such unexplained 422s
    end up refusing every product of the chunk, the problem is not an item: the chunk fails.
    Returns (products accepted, rejected id -> reason, requests made). Transient errors
    propagate for a retry.
    """
    pending, accepted, requests, unexplained = [chunk], 0, 0, 0
    rejected: dict[str, str] = {}
    while pending:
        part = pending.pop()
        if part.height == 0:
            continue
        requests += 1
        try:
            client.put_inventory(chunk_body(part))
        except ItemsRejected as exc:
            ids = set(part["id"])
            named = {pid: why for pid, why in exc.rejected.items() if pid in ids}
            if named:
                rejected |= named
                pending.append(part.filter(~pl.col("id").is_in(list(named))))
            elif part.height > 1:
                pending += _halves(part)
            else:
                rejected[part["id"][0]] = str(exc)
                unexplained += 1
            continue
        except TooLarge:
            if part.height == 1:
                raise
            pending += _halves(part)
            continue
        on_accepted(part)
        accepted += part.height
    if accepted == 0 and unexplained == chunk.height > 1:
        raise FatalError(
            f"PUT /inventory: HTTP 422 for every one of the chunk's {chunk.height} products, "
            f"without naming any: not an item problem (last: {next(iter(rejected.values()))})",
            status=422,
        )
    return accepted, rejected, requests


def _halves(part: pl.DataFrame) -> list[pl.DataFrame]:
    """The two halves of a part, the first half last, so that it is sent first."""
    half = part.height // 2
    return [part.slice(half), part.slice(0, half)]


@task(name="put-chunk", task_run_name="chunk {label}", cache_policy=NO_CACHE)
def put_chunk(
    chunk: pl.DataFrame,
    number: int,
    label: str,
    settings: LightspeedSettings,
    token: SecretStr,
    state_dir: str,
    run: str,
) -> ChunkResult:
    """PUT one chunk and record what landed; on 429 wait out Retry-After, then let Prefect retry."""
    attempt = task_run.run_count or 1
    logger = get_run_logger()
    store = StateStore(state_dir)
    stage = current_progress().stage(LOAD_STAGE)

    def landed(part: pl.DataFrame) -> None:
        store.commit(part, run)
        stage.advance(items=part.height)

    if attempt > 1:  # a retry: what an earlier attempt already landed is not sent again
        chunk = chunk.filter(~pl.col("id").is_in(list(store.landed_in_run(chunk["id"], run))))
    try:
        accepted, rejected, requests = send_isolating(
            shared_client(settings, token, run), chunk, landed
        )
    except LightspeedError as exc:
        exc.attempts = attempt
        will_retry = isinstance(exc, RetryableError) and attempt <= settings.retries
        if will_retry:
            stage.retried()
        if will_retry and exc.retry_after:
            wait = min(exc.retry_after, settings.max_retry_after_seconds)
            logger.warning("attempt %d: %s; waiting Retry-After %.1fs", attempt, exc, wait)
            time.sleep(wait)
            stage.waited(wait)
        else:
            logger.warning("attempt %d: %s%s", attempt, exc, "; will retry" if will_retry else "")
        raise
    for pid, why in rejected.items():
        logger.warning("product %s rejected by the API and quarantined for this run: %s", pid, why)
    return ChunkResult(number, label, accepted, attempt, requests, rejected)


def load(
    payload: pl.DataFrame, settings: LightspeedSettings, token: SecretStr, state_dir: str, run: str
) -> LoadOutcome:
    """Send every chunk, at most max_concurrency at once; a failed chunk does not stop the others.

    The one exception is 401/403: the token is wrong for every chunk, so no further chunk is
    started and the ones not sent are reported as such.
    """
    try:
        outcome = _load(payload, settings, token, state_dir, run)
        outcome.waited_seconds = shared_client(settings, token, run).waited_seconds
    finally:
        close_shared_clients(run)
    landed = StateStore(state_dir).landed_in_run(
        pl.concat([f.products["id"] for f in outcome.failed]) if outcome.failed else [], run
    )
    outcome.failed = [f.without(landed) for f in outcome.failed]
    return outcome


def _load(
    payload: pl.DataFrame, settings: LightspeedSettings, token: SecretStr, state_dir: str, run: str
) -> LoadOutcome:
    chunks = split_into_chunks(payload, settings.chunk_size)
    outcome = LoadOutcome(chunks=len(chunks))
    if not chunks:
        return outcome
    put = put_chunk.with_options(**retry_policy(settings))
    progress = cast(
        UUID,
        create_progress_artifact(
            0.0,
            key=PROGRESS_KEY,
            description=f"{len(chunks)} chunk(s) of up to {settings.chunk_size}",
        ),
    )
    stage = current_progress().start(
        LOAD_STAGE,
        "chunk",
        total=len(chunks),
        items_label="products landed",
        items_total=payload.height,
    )
    queue = [(n, chunk_label(n, len(chunks), c), c) for n, c in enumerate(chunks, start=1)]
    queue.reverse()
    in_flight: dict[PrefectFuture[ChunkResult], tuple[int, str, pl.DataFrame]] = {}
    stop_reason = ""
    progress_at = time.monotonic()
    with ThreadPoolTaskRunner(max_workers=settings.max_concurrency) as runner:  # type: ignore[var-annotated]
        while queue or in_flight:
            while queue and not stop_reason and len(in_flight) < settings.max_concurrency:
                number, label, chunk = queue.pop()
                parameters = {
                    "chunk": chunk,
                    "number": number,
                    "label": label,
                    "settings": settings,
                    "token": token,
                    "state_dir": state_dir,
                    "run": run,
                }
                in_flight[runner.submit(put, parameters=parameters)] = (number, label, chunk)
            if not in_flight:
                break
            future = next(as_completed(list(in_flight)))
            number, label, chunk = in_flight.pop(future)
            result = future.result(raise_on_failure=False)
            stage.set_client_totals(0, shared_client(settings, token, run).waited_seconds)
            if isinstance(result, ChunkResult):
                outcome.accepted.append(result)
                stage.advance(done=1)
            else:
                failure = _failure(number, label, chunk, result, settings)
                outcome.failed.append(failure)
                stage.failed()
                if failure.stops_load:
                    stop_reason = f"not sent: an earlier chunk got HTTP {failure.status}"
            finished = not in_flight and (not queue or bool(stop_reason))
            if progress is not None and (
                finished or time.monotonic() - progress_at >= PROGRESS_EVERY_SECONDS
            ):
                done = len(outcome.accepted) + len(outcome.failed)
                update_progress_artifact(progress, 100.0 * done / len(chunks))
                progress_at = time.monotonic()
    for number, label, chunk in reversed(queue):
        outcome.failed.append(ChunkFailure(number, label, stop_reason, None, 0, chunk))
    stage.finish()
    outcome.accepted.sort(key=lambda c: c.number)
    outcome.failed.sort(key=lambda f: f.number)
    return outcome


def _failure(
    number: int, label: str, chunk: pl.DataFrame, error: object, settings: LightspeedSettings
) -> ChunkFailure:
    if isinstance(error, LightspeedError):
        attempts = getattr(error, "attempts", settings.retries + 1)
        stops = isinstance(error, Unauthorized)
        return ChunkFailure(number, label, str(error), error.status, attempts, chunk, stops)
    return ChunkFailure(number, label, f"{type(error).__name__}: {error}", None, 1, chunk)
