"""Per-request retries of idempotent reads: one bad page out of thousands costs one request.

Exponential backoff with full jitter (tenacity), Retry-After honoured when the server gives
one, a bounded number of attempts. PUTs are not retried here: a chunk is retried by its Prefect
task, the unit a user watches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

T = TypeVar("T")
logger = logging.getLogger("inventory_sync.reads")


@dataclass(frozen=True)
class ReadPolicy:
    attempts: int = 6  # the first try and five retries
    backoff_seconds: float = 0.5  # full jitter up to this, doubling per retry
    max_wait_seconds: float = 30.0  # the longest backoff, and the longest Retry-After honoured


@dataclass
class ReadCounts:
    """What the reads of a run cost: requests that succeeded, and retries on the way."""

    reads: int = 0
    retries: int = 0


def run_warning(message: str) -> None:
    """A warning in the Prefect run's log when there is one, else in the process's log."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        get_run_logger().warning(message)
    except MissingContextError:
        logger.warning(message)


def read_with_retries(
    call: Callable[[], T],
    policy: ReadPolicy,
    retryable: type[BaseException],
    retry_after: Callable[[BaseException], float | None],
    counts: ReadCounts | None = None,
    say: Callable[[str], None] | None = None,
) -> T:
    """Call until it returns, retrying only `retryable` errors; the last error propagates."""
    backoff = wait_random_exponential(
        multiplier=policy.backoff_seconds, max=policy.max_wait_seconds
    )

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        asked = retry_after(error) if error is not None else None
        return min(asked, policy.max_wait_seconds) if asked is not None else backoff(state)

    def before_sleep(state: RetryCallState) -> None:
        if counts is not None:
            counts.retries += 1
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        message = f"{error}; retry {state.attempt_number} of {policy.attempts - 1} in {delay:.1f}s"
        (say or run_warning)(message)

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait,
        retry=retry_if_exception_type(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    result = retrying(call)
    if counts is not None:
        counts.reads += 1
    return result
