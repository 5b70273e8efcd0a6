"""The Lightspeed B2B API: the only code that knows its paths, headers, paging and status codes.

Every response gets a verdict: accepted, retryable (429, 5xx, timeouts, dropped connections) or
one of the fatal errors (Unauthorized, TooLarge, ItemsRejected, or another 4xx), with the
server's message. The client itself never retries: retries
belong to the Prefect task that called it, so the UI shows each attempt.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx
from pydantic import SecretStr

from tasks.config.settings import LightspeedSettings
from tasks.http_verdicts import (
    USER_AGENT,
    Unreachable,
    is_transient,
    json_or_none,
    retry_after_seconds,
    send,
    server_message,
)
from tasks.retries import retry_options


class LightspeedError(Exception):
    """A call the API did not accept; `retryable` says whether trying again can help."""

    retryable = False
    attempts = 1  # set by the task that made the call, for the report

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class RetryableError(LightspeedError):
    """429, 5xx, a timeout or a dropped connection: the same call may succeed later."""

    retryable = True


class FatalError(LightspeedError):
    """A 4xx: retrying the same call cannot help."""


class Unauthorized(FatalError):
    """401 or 403: the token is wrong for every call, so no further chunk is worth sending."""


class TooLarge(FatalError):
    """413: too many products in one call; a smaller one may pass."""


class ItemsRejected(FatalError):
    """422: the call was refused for its items; `rejected` names those the API named (id → why)."""

    def __init__(self, message: str, *, rejected: dict[str, str]) -> None:
        super().__init__(message, status=422)
        self.rejected = rejected


@dataclass(frozen=True)
class Accepted:
    status: int
    body: Any


class LightspeedClient:
    """Owns base URL, auth, timeouts and the verdict on each response."""

    def __init__(self, settings: LightspeedSettings, token: SecretStr) -> None:
        self.base_url = settings.base_url + "/"
        self.per_page = settings.per_page
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {token.get_secret_value()}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            timeout=settings.timeout_seconds,
            limits=httpx.Limits(
                max_connections=settings.max_concurrency + 2,
                max_keepalive_connections=settings.max_concurrency + 2,
            ),
        )

    def close(self) -> None:
        self._http.close()

    def iter_products(self) -> Iterator[dict[str, Any]]:
        """Every product of the supplier, following `next` until it is null."""
        url: str | None = f"products?page=1&per_page={self.per_page}"
        seen: set[str] = set()
        while url:
            if url in seen:
                raise FatalError(f"GET /products: the API sent the same page twice ({url})")
            seen.add(url)
            body = self._send("GET", url).body
            products = body.get("products") if isinstance(body, dict) else None
            if not isinstance(products, list):
                raise FatalError("GET /products: response has no 'products' list")
            yield from products
            next_url = body.get("next")
            url = urljoin(self.base_url, next_url) if next_url else None
            if url and not url.startswith(self.base_url):
                raise FatalError(
                    f"GET /products: the next page {url!r} is not under {self.base_url}; "
                    "refusing to send the token elsewhere"
                )

    def put_inventory(self, payload: bytes) -> Accepted:
        """PUT one chunk, already serialised as `{"products": [{"id", "quantity"}, ...]}`."""
        return self._send("PUT", "inventory", content=payload)

    def _send(self, method: str, url: str, content: bytes | None = None) -> Accepted:
        what = f"{method} /{url.removeprefix(self.base_url).split('?')[0]}"
        try:
            response = send(self._http, method, url, what, content=content)
        except Unreachable as exc:
            raise RetryableError(str(exc)) from None
        return judge(what, response)


HINTS = {401: " (check the token)", 403: " (the token lacks permission)"}


def judge(what: str, response: httpx.Response) -> Accepted:
    """Turn a response into Accepted, or raise the LightspeedError that says what it means."""
    status = response.status_code
    body = json_or_none(response)
    if 200 <= status < 300:
        return Accepted(status, body)
    message = f"{what}: HTTP {status} {_message(body, response)}"
    if is_transient(status):
        raise RetryableError(message, status=status, retry_after=retry_after_seconds(response))
    if status in (401, 403):
        raise Unauthorized(message + HINTS[status], status=status)
    if status == 413:
        raise TooLarge(message + " (lower lightspeed.chunk_size)", status=status)
    if status == 422:
        raise ItemsRejected(message, rejected=_rejected_items(body))
    raise FatalError(message, status=status)


def _message(body: Any, response: httpx.Response) -> str:
    """The server's message; for a 422 without one, the items it names."""
    items = _rejected_items(body)
    if items and not (isinstance(body, dict) and isinstance(body.get("error"), str)):
        shown = "; ".join(f"{pid}: {why}" for pid, why in list(items.items())[:5])
        more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
        return f"{len(items)} product(s) rejected: {shown}{more}"
    return server_message(response)


def _rejected_items(body: Any) -> dict[str, str]:
    """The per-item errors of a 422: `{"products": [{"id", "error"}]}`."""
    items = body.get("products") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return {}
    return {
        str(item["id"]): str(item.get("error", "rejected"))
        for item in items
        if isinstance(item, dict) and "id" in item
    }


def retry_policy(settings: LightspeedSettings) -> dict[str, Any]:
    """Prefect task options for an API call: retry a RetryableError, never a FatalError or a bug."""
    return retry_options(settings.retries, settings.retry_backoff_seconds, RetryableError)


_clients: dict[tuple[str, LightspeedSettings, str], LightspeedClient] = {}
_clients_lock = threading.Lock()


def shared_client(settings: LightspeedSettings, token: SecretStr, run: str) -> LightspeedClient:
    """One keep-alive client per run, shared by that run's chunk tasks' threads."""
    key = (run, settings, token.get_secret_value())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = LightspeedClient(settings, token)
        return client


def close_shared_clients(run: str) -> None:
    """Close the clients of one run (others in this process keep theirs)."""
    with _clients_lock:
        for key in [k for k in _clients if k[0] == run]:
            _clients.pop(key).close()
