"""Per-request retries of reads: bounded, backing off, honouring Retry-After, counted."""

from __future__ import annotations

import pytest

from tasks.http.read_retries import ReadCounts, ReadPolicy, read_with_retries

pytestmark = pytest.mark.fast


class Flaky(Exception):
    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("flaky")
        self.retry_after = retry_after


def failing(times: int, error: Exception):
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "page"

    return call, calls


def test_a_transient_failure_costs_one_more_request_and_is_counted():
    call, calls = failing(2, Flaky())
    counts, said = ReadCounts(), []
    policy = ReadPolicy(attempts=5, backoff_seconds=0, max_wait_seconds=0)
    assert read_with_retries(call, policy, Flaky, lambda e: None, counts, said.append) == "page"
    assert len(calls) == 3 and (counts.reads, counts.retries) == (1, 2)
    assert said[0] == "flaky; retry 1 of 4 in 0.0s"


def test_attempts_are_bounded_and_the_last_error_propagates():
    call, calls = failing(10, Flaky())
    policy = ReadPolicy(attempts=3, backoff_seconds=0, max_wait_seconds=0)
    with pytest.raises(Flaky):
        read_with_retries(call, policy, Flaky, lambda e: None, say=lambda m: None)
    assert len(calls) == 3


def test_other_errors_are_not_retried():
    call, calls = failing(1, KeyError("bug"))
    with pytest.raises(KeyError):
        read_with_retries(call, ReadPolicy(), Flaky, lambda e: None, say=lambda m: None)
    assert len(calls) == 1


def test_retry_after_is_honoured_and_capped():
    said: list[str] = []
    call, _ = failing(2, Flaky(retry_after=0.02))
    policy = ReadPolicy(attempts=3, backoff_seconds=5, max_wait_seconds=0.01)
    read_with_retries(call, policy, Flaky, lambda e: e.retry_after, say=said.append)
    assert all(line.endswith("in 0.0s") for line in said)  # capped at 0.01 s, not 5 s backoff
