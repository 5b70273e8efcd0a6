"""PUT /inventory in requests of up to request_size products, grouped in chunks: a task run each.

A request is what the API takes in one call (its cap: 413 halves it). A chunk is what a user
watches: one Prefect task run, retried as a whole, that sends its requests with the
configured concurrency and records each accepted request in the state store as it lands
(within WINDOW_SECONDS: tasks.state.log_writer batches them, and the attempt ends only once all
are recorded). A retry of the chunk sends only the requests (or the parts of them) that did not
land.
"""

from __future__ import annotations

import contextvars
import threading
import time
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

from tasks.config.settings import LightspeedSettings
from tasks.lightspeed.chunks import (
    chunk_label,
    chunk_size_for,
    plan_requests,
    split_into_chunks,
    unlanded,
)
from tasks.lightspeed.client import (
    Credentials,
    LightspeedError,
    RetryableError,
    Unauthorized,
    close_shared_clients,
    retry_policy,
    shared_client,
)
from tasks.lightspeed.put_requests import chunk_error, send_requests
from tasks.report.progress import current as current_progress
from tasks.state.location import StateLocation
from tasks.state.store import StateStore

PROGRESS_KEY = "load-progress"
LOAD_STAGE = "load"  # its counts, for the CLI's progress display
# Each update is a blocking round trip to the Prefect server (a new API client each time,
# costly in this process's CPU), so the bar moves at most every 5 s, and at the end, from a
# thread of its own (ProgressArtifact).
PROGRESS_EVERY_SECONDS = 5.0
# Chunk task runs in flight: while one starts or finishes (Prefect's bookkeeping), the other
# sends. Requests in flight are max_concurrency across both (the client's slots).
CHUNKS_IN_FLIGHT = 2
# A load folds its state log into the snapshot once the log holds this share of it: a 2 %
# cycle does not rewrite a million-product snapshot; a full sync, or every ~10th cycle, does.
FOLD_SHARE = 0.2


@dataclass(frozen=True)
class ChunkResult:
    """A chunk the API accepted (all but the products it rejected), and after how many attempts."""

    number: int
    label: str
    products: int  # landed this run, over all attempts
    attempts: int
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
        """The same failure, less the products an earlier attempt (or request) did land."""
        if not landed:
            return self
        return replace(self, products=self.products.filter(~pl.col("id").is_in(list(landed))))


@dataclass
class LoadOutcome:
    chunks: int = 0
    accepted: list[ChunkResult] = field(default_factory=list)
    failed: list[ChunkFailure] = field(default_factory=list)
    waited_seconds: float = 0.0  # for room in the platform's rate-limit bucket
    requests: int = 0  # PUT calls made, retries, splits and refusals included

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
    def attempts(self) -> int:
        return sum(c.attempts for c in self.accepted) + sum(f.attempts for f in self.failed)


@task(name="put-chunk", task_run_name="chunk {label}", cache_policy=NO_CACHE)
def put_chunk(
    chunk: pl.DataFrame,
    number: int,
    label: str,
    settings: LightspeedSettings,
    credentials: Credentials,
    state: StateLocation,
    run: str,
) -> ChunkResult:
    """Send one chunk's requests and record each that lands; on 429 wait out Retry-After, then let Prefect retry."""
    attempt = task_run.run_count or 1
    logger = get_run_logger()
    store = StateStore(state)
    requests = plan_requests(chunk, settings.request_size)
    landed_before = store.landed_in_run(chunk["id"], run) if attempt > 1 else set()
    to_send = unlanded(requests, landed_before)
    if attempt > 1:
        logger.info(
            "attempt %d: %d of %d request(s) landed earlier; sending %d",
            attempt, len(requests) - len(to_send), len(requests), len(to_send),
        )  # fmt: skip
    stage = current_progress().stage(LOAD_STAGE)
    with store.log_writer(run) as log:  # every request that landed is recorded on leaving

        def landed(part: pl.DataFrame) -> None:
            log.add(part)
            stage.advance(items=part.height)

        outcomes = send_requests(
            shared_client(settings, credentials, run), to_send, settings.max_concurrency, landed
        )
    # one record for all: each log line costs this process time, and the Prefect server more
    failed = any(o.error is not None for o in outcomes)
    (logger.warning if failed else logger.info)(
        "attempt %d: %d request(s)\n%s",
        attempt, len(outcomes), "\n".join(o.line(len(requests)) for o in outcomes),
    )  # fmt: skip
    rejected = {pid: why for o in outcomes for pid, why in o.rejected.items()}
    for pid, why in rejected.items():
        logger.warning("product %s rejected by the API and quarantined for this run: %s", pid, why)
    error = chunk_error(outcomes)
    if error is not None:
        error.attempts = attempt
        will_retry = isinstance(error, RetryableError) and attempt <= settings.retries
        if will_retry:
            stage.retried()
        if will_retry and error.retry_after:
            wait_for = min(error.retry_after, settings.max_retry_after_seconds)
            logger.warning("attempt %d: %s; waiting Retry-After %.1fs", attempt, error, wait_for)
            time.sleep(wait_for)
            stage.waited(wait_for)
        else:
            logger.warning("attempt %d: %s%s", attempt, error, "; will retry" if will_retry else "")
        raise error
    products = len(landed_before) + sum(o.accepted for o in outcomes)
    return ChunkResult(number, label, products, attempt, rejected)


def load(
    payload: pl.DataFrame,
    settings: LightspeedSettings,
    credentials: Credentials,
    state: StateLocation,
    run: str,
) -> LoadOutcome:
    """Send every chunk, CHUNKS_IN_FLIGHT at once; a failed chunk does not stop the others.

    The one exception is 401/403: the token is wrong for every chunk, so no further chunk is
    started and the ones not sent are reported as such. When the load is done, the log of
    landed requests is folded into the state's snapshot.
    """
    store = StateStore(state)
    try:
        outcome = _load(payload, settings, credentials, state, run)
        client = shared_client(settings, credentials, run)
        outcome.waited_seconds, outcome.requests = client.waited_seconds, client.put_calls
    finally:
        close_shared_clients(run)
    landed = store.landed_in_run(
        pl.concat([f.products["id"] for f in outcome.failed]) if outcome.failed else [], run
    )
    outcome.failed = [f.without(landed) for f in outcome.failed]
    store.fold_pushed(unless_below=FOLD_SHARE)
    return outcome


def _load(
    payload: pl.DataFrame,
    settings: LightspeedSettings,
    credentials: Credentials,
    state: StateLocation,
    run: str,
) -> LoadOutcome:
    size = chunk_size_for(payload.height, settings)
    chunks = split_into_chunks(payload, size)
    outcome = LoadOutcome(chunks=len(chunks))
    if not chunks:
        return outcome
    put = put_chunk.with_options(**retry_policy(settings))
    per_request = min(size, settings.request_size)
    get_run_logger().info(
        "load: %d product(s) in %d chunk(s) of up to %d, PUT requests of up to %d, %d at once",
        payload.height, len(chunks), size, per_request, settings.max_concurrency,
    )  # fmt: skip
    progress = ProgressArtifact(
        f"{len(chunks)} chunk(s) of up to {size} products, in requests of up to {per_request}"
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
    with progress, ThreadPoolTaskRunner(max_workers=CHUNKS_IN_FLIGHT) as runner:  # type: ignore[var-annotated]
        while queue or in_flight:
            while queue and not stop_reason and len(in_flight) < CHUNKS_IN_FLIGHT:
                number, label, chunk = queue.pop()
                parameters = {
                    "chunk": chunk,
                    "number": number,
                    "label": label,
                    "settings": settings,
                    "credentials": credentials,
                    "state": state,
                    "run": run,
                }
                in_flight[runner.submit(put, parameters=parameters)] = (number, label, chunk)
            if not in_flight:
                break
            future = next(as_completed(list(in_flight)))
            number, label, chunk = in_flight.pop(future)
            result = future.result(raise_on_failure=False)
            stage.set_client_totals(0, shared_client(settings, credentials, run).waited_seconds)
            if isinstance(result, ChunkResult):
                outcome.accepted.append(result)
                stage.advance(done=1)
            else:
                failure = _failure(number, label, chunk, result, settings)
                outcome.failed.append(failure)
                stage.failed()
                if failure.stops_load:
                    stop_reason = f"not sent: an earlier chunk got HTTP {failure.status}"
            progress.set(100.0 * (len(outcome.accepted) + len(outcome.failed)) / len(chunks))
    for number, label, chunk in reversed(queue):
        outcome.failed.append(ChunkFailure(number, label, stop_reason, None, 0, chunk))
    stage.finish()
    outcome.accepted.sort(key=lambda c: c.number)
    outcome.failed.sort(key=lambda f: f.number)
    return outcome


class ProgressArtifact:
    """The load's progress artifact in the UI, created and moved by a thread of its own.

    Each call is a blocking round trip to the Prefect server with a new API client, slowest
    during a full sync; made from the loop that starts chunks, it would stall that loop. `set`
    only notes the figure; the thread sends the latest at most every PROGRESS_EVERY_SECONDS,
    and the last one when the block ends. A failure to update it is a warning: the UI's bar is not worth a load.
    """

    def __init__(self, description: str) -> None:
        self._description = description
        self._percent: float | None = None  # the latest figure, and the one the UI shows
        self._sent = 0.0
        self._closing = False
        self._changed = threading.Condition()
        context = contextvars.copy_context()  # the flow run's: the artifact is the run's
        self._thread = threading.Thread(
            target=context.run, args=(self._report,), name="load-progress", daemon=True
        )

    def __enter__(self) -> ProgressArtifact:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join()

    def set(self, percent: float) -> None:
        with self._changed:
            self._percent = percent
            self._changed.notify()

    def _news(self) -> bool:
        return self._closing or (self._percent is not None and self._percent != self._sent)

    def _report(self) -> None:
        logger = get_run_logger()
        try:
            artifact = cast(
                UUID, create_progress_artifact(0.0, key=PROGRESS_KEY, description=self._description)
            )
            while True:
                with self._changed:
                    self._changed.wait_for(self._news)
                    percent, closing = self._percent, self._closing
                if percent is not None and percent != self._sent:
                    update_progress_artifact(artifact, percent)
                    self._sent = percent
                if closing:
                    return
                with self._changed:  # at most one update every PROGRESS_EVERY_SECONDS
                    self._changed.wait_for(lambda: self._closing, PROGRESS_EVERY_SECONDS)
        except Exception as exc:
            logger.warning("the load's progress artifact was not updated: %s", exc)


def _failure(
    number: int, label: str, chunk: pl.DataFrame, error: object, settings: LightspeedSettings
) -> ChunkFailure:
    if isinstance(error, LightspeedError):
        attempts = getattr(error, "attempts", settings.retries + 1)
        stops = isinstance(error, Unauthorized)
        return ChunkFailure(number, label, str(error), error.status, attempts, chunk, stops)
    return ChunkFailure(number, label, f"{type(error).__name__}: {error}", None, 1, chunk)
