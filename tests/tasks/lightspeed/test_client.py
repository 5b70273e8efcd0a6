"""The client's verdict on each response, and its paging, against httpx.MockTransport fakes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tasks.config.settings import LightspeedSettings
from tasks.lightspeed.client import (
    Accepted,
    FatalError,
    ItemsRejected,
    LightspeedClient,
    LightspeedError,
    RetryableError,
    TooLarge,
    Unauthorized,
)

pytestmark = pytest.mark.fast

BASE = "https://api.test/v1"
TOKEN = "unit-token"
Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, **settings_: Any) -> LightspeedClient:
    """A real client whose requests go to `handler` instead of the network; reads retry at once."""
    fields = {"base_url": BASE, "per_page": 2, "read_backoff_seconds": 0} | settings_
    settings = LightspeedSettings(**fields)
    return LightspeedClient(settings, SecretStr(TOKEN), transport=httpx.MockTransport(handler))


def answer(status: int, body: Any = None, text: str = "", **headers: str) -> Handler:
    """A fake API that gives every request the same response."""

    def handle(request: httpx.Request) -> httpx.Response:
        if body is not None:
            return httpx.Response(status, json=body, headers=headers)
        return httpx.Response(status, text=text, headers=headers)

    return handle


def test_a_put_carries_the_token_the_json_headers_and_the_body_as_given():
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"updated": 1})

    body = b'{"products":[{"id":"a","quantity":3}]}'
    assert client(handle).put_inventory(body) == Accepted(200, {"updated": 1})
    (request,) = seen
    assert (request.method, str(request.url)) == ("PUT", f"{BASE}/inventory")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.content == body


@pytest.mark.parametrize(
    ("status", "body", "text", "headers", "error", "message", "retry_after"),
    [
        (429, {"error": "slow down"}, "", {"Retry-After": "3"}, RetryableError, "HTTP 429 slow down", 3.0),
        (429, None, "", {"Retry-After": "Wed, 21 Oct 2037 07:28:00 GMT"}, RetryableError, "HTTP 429 Too Many Requests", None),
        (429, None, "", {"Retry-After": "-5"}, RetryableError, "HTTP 429 Too Many Requests", 0.0),
        (503, None, "down for maintenance", {}, RetryableError, "HTTP 503 down for maintenance", None),
        (500, {"message": "boom"}, "", {}, RetryableError, "HTTP 500 boom", None),
        (502, None, "", {}, RetryableError, "HTTP 502 Bad Gateway", None),
        (504, {"detail": "upstream"}, "", {}, RetryableError, "HTTP 504 upstream", None),
        (599, None, "odd", {}, RetryableError, "HTTP 599 odd", None),
        (408, None, "", {}, RetryableError, "HTTP 408 Request Timeout", None),
        (425, None, "", {}, RetryableError, "HTTP 425 Too Early", None),
        (401, {"error": "invalid token"}, "", {}, Unauthorized, "HTTP 401 invalid token (check the token)", None),
        (403, {"title": "forbidden"}, "", {}, Unauthorized, "HTTP 403 forbidden (the token lacks permission)", None),
        (413, None, "", {}, TooLarge, "HTTP 413 Request Entity Too Large (lower lightspeed.request_size)", None),
        (400, {"error": "body is not JSON"}, "", {}, FatalError, "HTTP 400 body is not JSON", None),
        (404, None, "", {}, FatalError, "HTTP 404 Not Found", None),
        (409, {"error": 7, "message": "conflict"}, "", {}, FatalError, "HTTP 409 conflict", None),
    ],
)  # fmt: skip
def test_each_status_gets_its_verdict(status, body, text, headers, error, message, retry_after):
    with pytest.raises(LightspeedError) as raised:
        client(answer(status, body, text, **headers)).put_inventory(b"{}")
    assert type(raised.value) is error
    assert str(raised.value) == f"PUT /inventory: {message}"
    assert raised.value.status == status
    assert raised.value.retryable is (error is RetryableError)
    assert raised.value.retry_after == retry_after


@pytest.mark.parametrize(
    ("body", "rejected", "message"),
    [
        (
            {"products": [{"id": "a", "error": "unknown id"}, {"id": "b"}]},
            {"a": "unknown id", "b": "rejected"},
            "2 product(s) rejected: a: unknown id; b: rejected",
        ),
        (
            {"error": "bad items", "products": [{"id": "a", "error": "negative"}]},
            {"a": "negative"},
            "bad items",
        ),
        (
            {"products": [{"id": str(i), "error": "x"} for i in range(7)]},
            {str(i): "x" for i in range(7)},
            "7 product(s) rejected: 0: x; 1: x; 2: x; 3: x; 4: x (+2 more)",
        ),
        ({"products": ["a", {"error": "no id"}, {"id": 5}]}, {"5": "rejected"}, "1 product(s) rejected: 5: rejected"),
        ({"error": "quantity must be an integer"}, {}, "quantity must be an integer"),
        ({"products": "a,b"}, {}, '{"products":"a,b"}'),
    ],
)  # fmt: skip
def test_a_422_names_the_items_it_refused(body, rejected, message):
    with pytest.raises(ItemsRejected) as raised:
        client(answer(422, body)).put_inventory(b"{}")
    assert raised.value.rejected == rejected
    assert str(raised.value) == f"PUT /inventory: HTTP 422 {message}"
    assert (raised.value.status, raised.value.retryable) == (422, False)


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (httpx.ConnectError("refused"), "PUT /inventory: connection failed (ConnectError: refused)"),
        (httpx.RemoteProtocolError("dropped"), "PUT /inventory: connection failed (RemoteProtocolError: dropped)"),
        (httpx.ReadTimeout("slow"), "PUT /inventory: timed out (ReadTimeout)"),
        (httpx.ConnectTimeout("slow"), "PUT /inventory: timed out (ConnectTimeout)"),
    ],
)  # fmt: skip
def test_no_answer_at_all_is_retryable(failure, message):
    def handle(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(RetryableError) as raised:
        client(handle).put_inventory(b"{}")
    assert str(raised.value) == message
    assert raised.value.status is None


def pages(*bodies: Any) -> tuple[Handler, list[str]]:
    """A fake catalog answering GET /products with `bodies` in turn; also the URLs it was asked."""
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(200, content=json.dumps(bodies[len(asked) - 1]).encode())

    return handle, asked


def test_products_follow_next_until_it_is_null():
    handle, asked = pages(
        {"products": [{"id": "a"}, {"id": "b"}], "next": "products?page=2&per_page=2"},
        {"products": [{"id": "c"}], "next": f"{BASE}/products?page=3&per_page=2"},
        {"products": [], "next": None},
    )
    assert [p["id"] for p in client(handle).iter_products()] == ["a", "b", "c"]
    assert asked == [f"{BASE}/products?page={n}&per_page=2" for n in (1, 2, 3)]


@pytest.mark.parametrize(
    ("bodies", "message"),
    [
        (
            [
                {"products": [], "next": "products?page=2"},
                {"products": [], "next": "products?page=2"},
            ],
            f"GET /products: the API sent the same page twice ({BASE}/products?page=2)",
        ),
        (
            [{"products": [], "next": "https://elsewhere.test/products?page=2"}],
            "GET /products: the next page 'https://elsewhere.test/products?page=2' is not under "
            f"{BASE}/; refusing to send the token elsewhere",
        ),
        ([{"items": []}], "GET /products: response has no 'products' list"),
        ([["not", "an", "object"]], "GET /products: response has no 'products' list"),
    ],
)
def test_a_catalog_that_misbehaves_stops_the_read(bodies, message):
    handle, asked = pages(*bodies)
    with pytest.raises(FatalError) as raised:
        list(client(handle).iter_products())
    assert str(raised.value) == message
    assert len(asked) == len(bodies), "no page is asked for after the problem is seen"


def test_a_page_that_keeps_failing_says_which_call_failed_after_its_retries():
    asked: list[httpx.Request] = []
    failing = client(
        lambda r: asked.append(r) or httpx.Response(503, json={"error": "busy"}), read_retries=2
    )
    with pytest.raises(RetryableError, match=r"^GET /products: HTTP 503 busy$"):
        list(failing.iter_products())
    assert len(asked) == 3 and failing.reads.retries == 2


def test_a_page_that_fails_once_costs_one_more_request_not_a_new_read():
    answers = iter([503, 200, 503, 200])
    bodies = iter(
        [{"products": [{"id": "a"}], "next": "products?page=2"}, {"products": [{"id": "b"}]}]
    )
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params["page"])
        status = next(answers)
        return httpx.Response(status, json=next(bodies) if status == 200 else {"error": "blip"})

    flaky = client(handle)
    assert [p["id"] for p in flaky.iter_products()] == ["a", "b"]
    assert asked == ["1", "1", "2", "2"]
    assert (flaky.reads.reads, flaky.reads.retries) == (2, 2)
