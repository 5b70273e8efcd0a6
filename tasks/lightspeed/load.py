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
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import cast
from uuid import UUID

import orjson
import polars as pl
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import task_run
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.config.settings import LightspeedSettings
from tasks.lightspeed.client import (
    Credentials,
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
from tasks.state import StateLocation, StateStore

PROGRESS_KEY = "load-progress"
LOAD_STAGE = "load"  # its counts, for the CLI's progress display
# Each update is a blocking round trip to the Prefect server (a new API client each time:
# ~0.1 s of this process's CPU under load), so the bar moves at most every 5 s, and at the end,
# from a thread of its own (ProgressArtifact).
PROGRESS_EVERY_SECONDS = 5.0
# A task run costs ~5-10 ms of client CPU and ~40 ms of a local Prefect server's, on the cores
# the sync runs on; the default chunk keeps a run to at most this many, whatever its size. A
# full sync of 1M products at request_size 250 took 7.0 s with 50 and 7.9-9.0 s with 100
# (against 3.5-4.1 s for a bare httpx loop); a chunk of 80 requests retries only the ones that
# did not land, so bigger chunks cost a retry nothing.
MAX_TASK_RUNS = 50
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


def chunk_size_for(products: int, settings: LightspeedSettings) -> int:
    """Products per chunk: lightspeed.chunk_size if set, else whole requests, ≤ MAX_TASK_RUNS chunks.

    At least max_concurrency requests each, so that one chunk can fill the request slots: a
    2 % cycle of 20,000 products is 10 task runs of 4 PUTs, not 40 of one, which left half the
    slots idle (two chunks in flight) and paid Prefect's ~50 ms per task run 40 times.
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

    orjson over the two columns as lists: 66 µs for 250 products, where polars' write_json
    took 270 µs (and more with a load's request threads sharing polars' pool).
    """
    ids, quantities = chunk["id"].to_list(), chunk["quantity"].to_list()
    products = [{"id": i, "quantity": q} for i, q in zip(ids, quantities, strict=True)]
    return orjson.dumps({"products": products})


@dataclass(frozen=True)
class RequestOutcome:
    """What became of one request of a chunk in one attempt."""

    number: int
    products: pl.DataFrame  # what it was to send
    accepted: int = 0
    rejected: dict[str, str] = field(default_factory=dict)
    calls: int = 0  # HTTP calls it took (a 413 or an unexplained 422 splits it)
    error: LightspeedError | None = None  # why (the rest of) it did not land
    sent: bool = True  # False: not started, an earlier request stopped the chunk

    def line(self, total: int) -> str:
        """One log line: `request 3/20 SKU-A…SKU-K (250 products): 250 accepted in 1 call`."""
        head = f"request {self.number}/{total} {sku_range(self.products)}"
        if not self.sent:
            return f"{head}: not sent, {self.error}"
        done = f"{self.accepted} accepted in {self.calls} call(s)"
        if self.rejected:
            done += f", {len(self.rejected)} rejected"
        return f"{head}: {done}" + (f"; the rest did not land: {self.error}" if self.error else "")


def send_isolating(
    client: LightspeedClient,
    number: int,
    products: pl.DataFrame,
    on_accepted: Callable[[pl.DataFrame], None],
) -> RequestOutcome:
    """PUT one request so that one bad item never blocks the rest.

    413: split in halves and send each (and, for the rest of the run, split anything as big
    before sending it). 422: drop the ids the response names and resend the rest; when it
    names none, split until the bad items stand alone. If such unexplained 422s end up
    refusing every product, the problem is not an item: it fails. Any other error ends the
    request, with what landed before it counted.
    """
    pending, accepted, calls, unexplained = [products], 0, 0, 0
    rejected: dict[str, str] = {}

    def outcome(error: LightspeedError | None = None) -> RequestOutcome:
        return RequestOutcome(number, products, accepted, rejected, calls, error)

    while pending:
        part = pending.pop()
        if part.height == 0:
            continue
        if part.height > 1 and not client.may_put(part.height):
            pending += _halves(part)
            continue
        calls += 1
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
        except TooLarge as exc:
            client.refused_put(part.height)
            if part.height == 1:
                return outcome(exc)
            pending += _halves(part)
            continue
        except LightspeedError as exc:
            return outcome(exc)
        on_accepted(part)
        accepted += part.height
    if accepted == 0 and unexplained == products.height > 1:
        return outcome(
            FatalError(
                f"PUT /inventory: HTTP 422 for every one of the request's {products.height} "
                f"products, without naming any: not an item problem "
                f"(last: {next(iter(rejected.values()))})",
                status=422,
            )
        )
    return outcome()


def _halves(part: pl.DataFrame) -> list[pl.DataFrame]:
    """The two halves of a part, the first half last, so that it is sent first."""
    half = part.height // 2
    return [part.slice(half), part.slice(0, half)]


def stops_chunk(error: LightspeedError | None) -> bool:
    """Whether a request's error means the chunk's other requests should not start now."""
    return isinstance(error, Unauthorized) or bool(error is not None and error.retry_after)


def send_requests(
    client: LightspeedClient,
    requests: dict[int, pl.DataFrame],
    concurrency: int,
    on_accepted: Callable[[pl.DataFrame], None],
) -> list[RequestOutcome]:
    """Send a chunk's requests, `concurrency` at a time, in order of their numbers.

    After a 401/403 or a Retry-After, the requests not yet started are not sent (they are
    reported as such): the token is wrong for all of them, or the API asked us to wait.
    """
    queue = sorted(requests.items(), reverse=True)
    outcomes: list[RequestOutcome] = []
    stop: LightspeedError | None = None
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(queue)))) as pool:
        running: set[Future[RequestOutcome]] = set()
        while queue or running:
            while queue and stop is None and len(running) < concurrency:
                number, products = queue.pop()
                running.add(pool.submit(send_isolating, client, number, products, on_accepted))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                outcome = future.result()
                outcomes.append(outcome)
                if stop is None and stops_chunk(outcome.error):
                    stop = outcome.error
    outcomes += [RequestOutcome(n, p, error=stop, sent=False) for n, p in reversed(queue)]
    return sorted(outcomes, key=lambda o: o.number)


def chunk_error(outcomes: Sequence[RequestOutcome]) -> LightspeedError | None:
    """The error the chunk's attempt fails with, if any request did not land.

    401/403 first (it stops the load), then a transient error (a retry can land the rest),
    then any other. With several requests down, the message says how many.
    """
    errors = [o.error for o in outcomes if o.error is not None]
    if not errors:
        return None
    chosen = next(
        (e for kind in (Unauthorized, RetryableError, LightspeedError) for e in errors
         if isinstance(e, kind)),
        errors[0],
    )  # fmt: skip
    down = sum(1 for o in outcomes if o.error is not None)
    if down == 1:
        return chosen
    waits = [e.retry_after for e in errors if e.retry_after]
    return type(chosen)(
        f"{down} of {len(outcomes)} request(s) did not land; {chosen}",
        status=chosen.status,
        retry_after=max(waits) if waits else None,
    )


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
    # one record for all: a log line costs ~0.5 ms of this process and more of the server's
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

    Each call is a blocking round trip to the Prefect server with a new API client: 0.1 s, and
    up to 1.8 s during a full sync. Made from the loop that starts chunks, it left no chunk
    running meanwhile (1.7-1.8 s of a 10 s load). `set` only notes the figure; the thread
    sends the latest at most every PROGRESS_EVERY_SECONDS, and the last one when the block
    ends. A failure to update it is a warning: the UI's bar is not worth a load.
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
