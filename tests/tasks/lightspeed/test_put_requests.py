"""One bad item never blocks a request: send_isolating against a fake PUT /inventory (MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from tasks.config.settings import LightspeedSettings
from tasks.lightspeed.client import FatalError, LightspeedClient, RetryableError, TooLarge
from tasks.lightspeed.load import ChunkFailure, ChunkResult, LoadOutcome
from tasks.lightspeed.put_requests import RequestOutcome, send_isolating

pytestmark = pytest.mark.fast

UNNAMED = {"error": "invalid payload"}
UNNAMED_MESSAGE = "PUT /inventory: HTTP 422 invalid payload"


@dataclass
class FakeInventory:
    """PUT /inventory as the platform refuses it: 413 over `cap`, then 503 or a 422 for bad items.

    A 422 names the `named` items of the call when it has any; otherwise a call holding an
    `unnamed` item gets `unnamed_body`, which names none of them. Nothing of a refused call lands.
    """

    cap: int = 1000
    named: dict[str, str] = field(default_factory=dict)  # id -> the reason the 422 gives
    unnamed: set[str] = field(default_factory=set)
    unnamed_body: dict[str, Any] = field(default_factory=lambda: UNNAMED)
    unavailable_for: set[str] = field(default_factory=set)  # a call holding one of these: 503
    held: dict[str, int] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        products = json.loads(request.content)["products"]
        ids = [p["id"] for p in products]
        self.calls.append(ids)
        if len(ids) > self.cap:
            return httpx.Response(413, json={"error": f"at most {self.cap} products"})
        if self.unavailable_for & set(ids):
            return httpx.Response(503, json={"error": "try later"})
        named = [{"id": i, "error": self.named[i]} for i in ids if i in self.named]
        if named:
            return httpx.Response(422, json={"products": named})
        if self.unnamed & set(ids):
            return httpx.Response(422, json=self.unnamed_body)
        self.held |= {p["id"]: p["quantity"] for p in products}
        return httpx.Response(200, json={"updated": len(ids)})


@contextmanager
def lightspeed(server: FakeInventory) -> Iterator[LightspeedClient]:
    """A real client whose HTTP goes to the fake."""
    settings = LightspeedSettings(base_url="https://api.test")
    client = LightspeedClient(settings, SecretStr("t"), transport=httpx.MockTransport(server))
    try:
        yield client
    finally:
        client.close()


def chunk(n: int) -> pl.DataFrame:
    """Products p0..p{n-1}, quantity 10+i."""
    return pl.DataFrame(
        {
            "id": [f"p{i}" for i in range(n)],
            "vendorSku": [f"S{i}" for i in range(n)],
            "quantity": [10 + i for i in range(n)],
        }
    )


def send(server: FakeInventory, n: int) -> tuple[RequestOutcome, list[list[str]]]:
    """send_isolating over chunk(n) as request 1; also the ids of each part it reported landed."""
    accepted_parts: list[list[str]] = []
    with lightspeed(server) as client:
        outcome = send_isolating(
            client, 1, chunk(n), lambda part: accepted_parts.append(part["id"].to_list())
        )
    return outcome, accepted_parts


def ids(*numbers: int) -> list[str]:
    return [f"p{i}" for i in numbers]


@pytest.mark.parametrize(
    ("server", "n", "calls", "accepted", "rejected"),
    [
        pytest.param(FakeInventory(), 4, [ids(0, 1, 2, 3)], 4, {}, id="all good: one call"),
        pytest.param(FakeInventory(), 0, [], 0, {}, id="empty chunk: no call"),
        pytest.param(
            FakeInventory(cap=2),
            5,
            [ids(0, 1, 2, 3, 4), ids(0, 1), ids(2, 3, 4), ids(2), ids(3, 4)],
            5,
            {},
            id="413 halves until each part fits, first half first",
        ),
        pytest.param(
            FakeInventory(named={"p1": "unknown id"}),
            4,
            [ids(0, 1, 2, 3), ids(0, 2, 3)],
            3,
            {"p1": "unknown id"},
            id="422 naming an item: resend the rest",
        ),
        pytest.param(
            FakeInventory(unnamed={"p2"}),
            4,
            [ids(0, 1, 2, 3), ids(0, 1), ids(2, 3), ids(2), ids(3)],
            3,
            {"p2": UNNAMED_MESSAGE},
            id="422 naming nobody: split until the bad item stands alone",
        ),
        pytest.param(
            FakeInventory(named={"p0": "negative"}, unnamed={"p3"}),
            4,
            [ids(0, 1, 2, 3), ids(1, 2, 3), ids(1), ids(2, 3), ids(2), ids(3)],
            2,
            {"p0": "negative", "p3": UNNAMED_MESSAGE},
            id="named first, then the unnamed one isolated",
        ),
        pytest.param(
            FakeInventory(unnamed={"p1"}, unnamed_body={"products": [{"id": "zz", "error": "?"}]}),
            2,
            [ids(0, 1), ids(0), ids(1)],
            1,
            {"p1": "PUT /inventory: HTTP 422 1 product(s) rejected: zz: ?"},
            id="422 naming only ids outside the part counts as naming nobody",
        ),
        pytest.param(
            FakeInventory(unnamed={"p0"}),
            1,
            [ids(0)],
            0,
            {"p0": UNNAMED_MESSAGE},
            id="a request of one refused unexplained: that one item is rejected",
        ),
    ],
)
def test_what_lands_and_what_is_rejected(server, n, calls, accepted, rejected):
    outcome, parts = send(server, n)
    assert server.calls == calls
    assert (outcome.accepted, outcome.rejected, outcome.calls) == (accepted, rejected, len(calls))
    assert outcome.error is None
    assert sorted(i for part in parts for i in part) == sorted(server.held)
    expected = {i: q for i, q in chunk(n).select("id", "quantity").iter_rows() if i not in rejected}
    assert server.held == expected


def test_a_422_for_every_product_naming_none_is_not_blamed_on_the_items():
    server = FakeInventory(unnamed=set(ids(0, 1, 2)))
    outcome, _ = send(server, 3)
    assert isinstance(outcome.error, FatalError)
    assert str(outcome.error) == (
        "PUT /inventory: HTTP 422 for every one of the request's 3 products, without naming "
        f"any: not an item problem (last: {UNNAMED_MESSAGE})"
    )
    assert outcome.error.status == 422 and server.held == {}


def test_a_single_product_too_large_for_the_api_fails_the_request():
    server = FakeInventory(cap=0)
    outcome, _ = send(server, 1)
    assert isinstance(outcome.error, TooLarge)
    assert server.calls == [ids(0)]


def test_a_transient_error_ends_the_request_after_the_parts_that_landed_were_reported():
    server = FakeInventory(cap=2, unavailable_for={"p3"})
    outcome, accepted_parts = send(server, 4)
    assert isinstance(outcome.error, RetryableError) and "HTTP 503 try later" in str(outcome.error)
    assert accepted_parts == [ids(0, 1)]  # committed already, so a retry need not resend them
    assert outcome.accepted == 2 and server.held == {"p0": 10, "p1": 11}


ROLES = st.sampled_from(["good", "named", "unnamed"])


@settings(max_examples=150, deadline=None)
@given(roles=st.lists(ROLES, min_size=1, max_size=24), cap=st.integers(1, 30))
def test_every_product_either_lands_or_is_rejected_never_both(roles: list[str], cap: int):
    n = len(roles)
    named = {f"p{i}": f"bad {i}" for i, role in enumerate(roles) if role == "named"}
    unnamed = {f"p{i}" for i, role in enumerate(roles) if role == "unnamed"}
    good = {f"p{i}" for i, role in enumerate(roles) if role == "good"}
    server = FakeInventory(cap=cap, named=named, unnamed=unnamed)
    outcome, parts = send(server, n)
    if len(unnamed) == n > 1:
        assert isinstance(outcome.error, FatalError)
        return
    assert outcome.error is None
    accepted, rejected, requests = outcome.accepted, outcome.rejected, outcome.calls
    landed = [i for part in parts for i in part]
    assert len(landed) == len(set(landed)) == accepted  # nothing reported twice
    assert set(landed) == good == set(server.held)  # every accepted product was good, and sent
    assert set(landed) | set(rejected) == set(chunk(n)["id"])  # nobody lost
    assert not set(landed) & set(rejected)
    assert {i: rejected[i] for i in named} == named  # the API's own reason is kept
    assert server.held == {f"p{i}": 10 + i for i in range(n) if f"p{i}" in good}
    assert requests == len(server.calls) and all(len(c) <= cap for c in parts)


def failure(number: int, *products: str, attempts: int = 1) -> ChunkFailure:
    frame = pl.DataFrame({"id": list(products), "vendorSku": list(products), "quantity": 1})
    return ChunkFailure(number, f"{number}/3", "HTTP 503", 503, attempts, frame)


def test_a_failure_less_what_an_earlier_attempt_landed():
    before = failure(2, "a", "b", "c")
    assert before.without(set()) is before
    assert before.without({"b", "x"}).products["id"].to_list() == ["a", "c"]


def test_the_outcome_adds_up_chunks_attempts_and_what_did_not_land():
    outcome = LoadOutcome(
        chunks=3,
        accepted=[
            ChunkResult(1, "1/3", products=4, attempts=1),
            ChunkResult(3, "3/3", products=2, attempts=2, rejected={"r": "why"}),
        ],
        failed=[failure(2, "a", "b", attempts=6)],
    )
    assert (outcome.products_sent, outcome.products_failed) == (6, 2)
    assert outcome.attempts == 1 + 2 + 6
    assert outcome.rejected == {"r": "why"}
    assert outcome.not_landed_ids == {"a", "b", "r"}
