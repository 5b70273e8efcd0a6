"""The Lightspeed B2B API: the only code that knows its paths, headers, paging and status codes.

Every response gets a verdict: accepted, retryable (429, 5xx, timeouts, dropped connections) or
one of the fatal errors (Unauthorized, TooLarge, ItemsRejected, or another 4xx), with the
server's message. A read (GET) is retried per request (tasks/http/read_retries.py); a PUT is
retried by the Prefect task that sent its chunk, so the UI shows each attempt.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, cast
from urllib.parse import urljoin

import httpx
from pydantic import SecretStr

from tasks.config.settings import LightspeedSettings
from tasks.errors import SyncError
from tasks.http.read_retries import ReadCounts, ReadPolicy, read_with_retries
from tasks.http.task_retries import retry_options
from tasks.http.verdicts import (
    USER_AGENT,
    Unreachable,
    is_transient,
    json_or_none,
    retry_after_seconds,
    send,
    server_message,
)
from tasks.lightspeed.account_limit import AccountLimitMissing, SlotUnavailable, request_slot
from tasks.lightspeed.pacing import account_pacer


class LightspeedError(SyncError):
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


@dataclass(frozen=True)
class ProductsPage:
    """One page of GET /products: its products as sent, and the URL of the next page (or None)."""

    url: str
    products: list[Any]
    next_url: str | None


class TokenSource(Protocol):
    """Where a client gets the Bearer token of each request (tasks/lightspeed/auth.py for OAuth)."""

    @property
    def identity(self) -> str:
        """What the account's pacer is keyed by."""
        ...

    def bearer(self) -> str: ...

    def renewed(self, rejected: str) -> str | None:
        """A token to try once more after `rejected` got a 401; None: the 401 stands."""
        ...


class Credentials(Protocol):
    def tokens(self) -> TokenSource: ...


@dataclass(frozen=True)
class StaticToken:
    """One long-lived token (auth kind "static"): its own source, never renewed."""

    token: SecretStr

    @property
    def identity(self) -> str:
        return self.token.get_secret_value()

    def tokens(self) -> StaticToken:
        return self

    def bearer(self) -> str:
        return self.token.get_secret_value()

    def renewed(self, rejected: str) -> str | None:
        return None


@cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verification (certifi's CA bundle), loaded once per process.

    Each client would load the bundle again, three times a run (catalog, load, read-back).
    A context is safe to share between clients and threads.
    """
    return httpx.create_ssl_context()


class LightspeedClient:
    """Owns base URL, auth, timeouts, paging, pacing and the verdict on each response.

    Reads (GET) are retried per request (tasks/http/read_retries.py); a PUT is never retried here:
    its chunk's Prefect task retries it, so the UI shows each attempt. The one exception is a
    401 with an OAuth token: the request is sent once more with a renewed token.
    """

    def __init__(
        self,
        settings: LightspeedSettings,
        credentials: Credentials | SecretStr,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if isinstance(credentials, SecretStr):  # a bare token: auth kind "static"
            credentials = cast(Credentials, StaticToken(credentials))
        self.base_url = settings.base_url + "/"
        self.per_page = settings.per_page
        self.costs = {"GET": settings.get_cost, "PUT": settings.put_cost}
        self.settings = settings
        self.tokens = credentials.tokens()
        self.pacer = account_pacer(self.base_url, self.tokens.identity)
        self.read_policy = ReadPolicy(
            attempts=settings.read_retries + 1,
            backoff_seconds=settings.read_backoff_seconds,
            max_wait_seconds=settings.max_retry_after_seconds,
        )
        self.reads = ReadCounts()
        self.waited_seconds = 0.0  # for room in the platform's rate-limit bucket
        # PUTs in flight, over every chunk of the run that shares this client
        self._put_slots = threading.BoundedSemaphore(settings.max_concurrency)
        self._refused_at: int | None = None  # the smallest PUT the API answered 413
        self.put_calls = 0
        self._count = threading.Lock()
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            timeout=settings.timeout_seconds,
            limits=httpx.Limits(
                max_connections=settings.max_concurrency + 2,
                max_keepalive_connections=settings.max_concurrency + 2,
            ),
            verify=tls_context(),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def page_url(self, number: int) -> str:
        """The URL of catalog page `number` (from 1), as the working contract pages it."""
        return urljoin(self.base_url, f"products?page={number}&per_page={self.per_page}")

    def get_page(self, url: str) -> ProductsPage:
        """GET one catalog page, retried per request on a transient failure."""
        return read_with_retries(
            lambda: self._read_page(url),
            self.read_policy,
            RetryableError,
            lambda exc: getattr(exc, "retry_after", None),
            self.reads,
        )

    def iter_pages(self, url: str) -> Iterator[ProductsPage]:
        """Pages from `url` on, following `next` until it is null."""
        seen: set[str] = set()
        next_url: str | None = url
        while next_url:
            if next_url in seen:
                raise FatalError(f"GET /products: the API sent the same page twice ({next_url})")
            seen.add(next_url)
            page = self.get_page(next_url)
            yield page
            next_url = page.next_url

    def iter_products(self) -> Iterator[dict[str, Any]]:
        """Every product of the supplier, page by page from the first."""
        for page in self.iter_pages(self.page_url(1)):
            yield from page.products

    def put_inventory(self, payload: bytes) -> Accepted:
        """PUT one request, serialised as `{"products": [{"id", "quantity"}, ...]}`."""
        with self._put_slots:
            with self._count:
                self.put_calls += 1
            return self._send("PUT", "inventory", content=payload)

    def may_put(self, products: int) -> bool:
        """Whether a PUT of this many products may fit: smaller than any the API refused (413)."""
        refused = self._refused_at
        return refused is None or products < refused

    def refused_put(self, products: int) -> None:
        """Remember a 413, so that the run splits anything as big before sending it."""
        if self._refused_at is None or products < self._refused_at:
            self._refused_at = products

    def _read_page(self, url: str) -> ProductsPage:
        body = self._send("GET", url).body
        products = body.get("products") if isinstance(body, dict) else None
        if not isinstance(products, list):
            raise FatalError("GET /products: response has no 'products' list")
        following = body.get("next")
        next_url = urljoin(self.base_url, following) if following else None
        if next_url and not next_url.startswith(self.base_url):
            raise FatalError(
                f"GET /products: the next page {next_url!r} is not under {self.base_url}; "
                "refusing to send the token elsewhere"
            )
        return ProductsPage(url, products, next_url)

    def _send(self, method: str, url: str, content: bytes | None = None) -> Accepted:
        what = f"{method} /{url.removeprefix(self.base_url).split('?')[0]}"
        bearer = self.tokens.bearer()
        response = self._exchange(method, url, what, content, bearer)
        if response.status_code == 401:
            renewed = self.tokens.renewed(bearer)
            if renewed is not None:  # expired or revoked in flight: once more, then it stands
                response = self._exchange(method, url, what, content, renewed)
        return judge(what, response)

    def _exchange(
        self, method: str, url: str, what: str, content: bytes | None, bearer: str
    ) -> httpx.Response:
        """One request through the account's pacer and slot; transport failures become errors."""
        cost = self.costs.get(method, self.costs["PUT"])
        started = time.monotonic()
        self.pacer.before(cost)
        self.waited_seconds += time.monotonic() - started
        try:
            with request_slot(self.settings):  # the account's requests in flight, across runs
                headers = {"Authorization": f"Bearer {bearer}"}
                response = send(self._http, method, url, what, content=content, headers=headers)
        except Unreachable as exc:
            self.pacer.after(cost, None)
            raise RetryableError(str(exc)) from None
        except SlotUnavailable as exc:
            self.pacer.after(cost, None)
            raise RetryableError(f"{what}: {exc}") from None
        except AccountLimitMissing as exc:
            self.pacer.after(cost, None)
            raise FatalError(f"{what}: {exc}") from None
        self.pacer.after(cost, response.headers)
        return response


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
        raise TooLarge(message + " (lower lightspeed.request_size)", status=status)
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


def retry_policy(settings: LightspeedSettings, retries: int | None = None) -> dict[str, Any]:
    """Prefect task options for an API call: retry a RetryableError, never a FatalError or a bug."""
    count = settings.retries if retries is None else retries
    return retry_options(count, settings.retry_backoff_seconds, RetryableError)


_clients: dict[tuple[str, LightspeedSettings, Credentials], LightspeedClient] = {}
_clients_lock = threading.Lock()


def shared_client(
    settings: LightspeedSettings, credentials: Credentials, run: str
) -> LightspeedClient:
    """One keep-alive client per run, shared by that run's chunk tasks' threads (and their slots)."""
    key = (run, settings, credentials)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = LightspeedClient(settings, credentials)
        return client


def close_shared_clients(run: str) -> None:
    """Close the clients of one run (others in this process keep theirs)."""
    with _clients_lock:
        for key in [k for k in _clients if k[0] == run]:
            _clients.pop(key).close()
