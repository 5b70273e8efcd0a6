"""One chunk's PUT requests, sent so that one bad item or a too-large call never blocks the rest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import polars as pl

from tasks.lightspeed.chunks import chunk_body, sku_range
from tasks.lightspeed.client import (
    FatalError,
    ItemsRejected,
    LightspeedClient,
    LightspeedError,
    RetryableError,
    TooLarge,
    Unauthorized,
)


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
