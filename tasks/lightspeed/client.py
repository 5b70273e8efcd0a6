"""The Lightspeed B2B API: the only code that knows its paths, headers, paging and status codes.

Every response gets a verdict: accepted, retryable (429, 5xx, timeouts, dropped connections) or
fatal (any other 4xx, with the server's message). The client itself never retries: retries
belong to the Prefect task that called it, so the UI shows each attempt.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx
from pydantic import SecretStr

from tasks.config import LightspeedSettings
from tasks.retries import retry_options

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "inventory-sync/0.1"


class LightspeedError(Exception):
    """A call the API did not accept; `retryable` says whether trying again can help."""

    retryable = False
    attempts = 1  # set by the task that made the call, for the report

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        rejected: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.rejected = rejected or {}


class RetryableError(LightspeedError):
    """429, 5xx, a timeout or a dropped connection: the same call may succeed later."""

    retryable = True


class FatalError(LightspeedError):
    """400, 401, 403, 404, 413, 422 and other 4xx: retrying the same call cannot help."""


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
            response = self._http.request(method, url, content=content)
        except httpx.TimeoutException as exc:
            raise RetryableError(f"{what}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise RetryableError(
                f"{what}: connection failed ({type(exc).__name__}: {exc})"
            ) from None
        return judge(what, response)


def judge(what: str, response: httpx.Response) -> Accepted:
    """Turn a response into Accepted, or raise RetryableError / FatalError with its message."""
    status = response.status_code
    body = _json_or_none(response)
    if 200 <= status < 300:
        return Accepted(status, body)
    message = f"{what}: HTTP {status} {_server_message(body, response)}"
    if status in RETRYABLE_STATUSES or status >= 500:
        raise RetryableError(message, status=status, retry_after=_retry_after(response))
    rejected = _rejected_items(body) if status == 422 else {}
    hint = {
        401: " (check the token)",
        403: " (the token lacks permission)",
        413: " (lower lightspeed.chunk_size)",
    }.get(status, "")
    raise FatalError(message + hint, status=status, rejected=rejected)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _server_message(body: Any, response: httpx.Response) -> str:
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            return body["error"]
        items = _rejected_items(body)
        if items:
            shown = "; ".join(f"{pid}: {why}" for pid, why in list(items.items())[:5])
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            return f"{len(items)} product(s) rejected: {shown}{more}"
    text = response.text.strip()
    return text[:300] if text else response.reason_phrase


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


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare; the task's own backoff applies


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
