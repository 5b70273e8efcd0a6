"""A local Lightspeed-compatible HTTP API with fault injection, for tests, demos and benchmarks."""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import os
import random
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from sandbox.catalog import check_products, is_valid_quantity, load_catalog, merge_products
from sandbox.oauth import DEFAULT_ACCESS_TOKEN_SECONDS, TOKEN_PATH, TokenIssuer

__all__ = ["Bucket", "Fault", "RecordedRequest", "SandboxServer", "load_catalog", "serve"]

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 1000
MAX_BODY_BYTES = 64 * 1024 * 1024
CONTROL_PREFIX = "/_sandbox"
DROP_MODES = ("before", "after")
PUBLIC_ROUTES = {"/products": "GET", "/inventory": "PUT", TOKEN_PATH: "POST"}
CONTROL_ROUTES = {
    "/_sandbox/quantities": ("GET",),
    "/_sandbox/requests": ("GET",),
    "/_sandbox/faults": ("GET", "POST"),
    "/_sandbox/reset": ("POST",),
    "/_sandbox/bucket": ("GET", "POST"),
    "/_sandbox/products": ("POST",),
    "/_sandbox/in-flight": ("GET",),
    "/_sandbox/oauth": ("GET", "POST"),
    "/_sandbox/oauth/grant": ("POST",),
    "/_sandbox/oauth/revoke": ("POST",),
}
BUCKET_LEVEL_HEADER = "X-LS-API-Bucket-Level"
BUCKET_DRIP_HEADER = "X-LS-API-Drip-Rate"
_DIGITS = re.compile(r"[0-9]{1,18}")
_NOT_JSON = object()
_NO_BODY = object()
_ROOM_EPSILON = 1e-9  # float slack when asking whether a cost still fits in the bucket

Headers = tuple[tuple[str, str], ...]


class _Keep(Enum):
    """The type of KEEP: 'leave this setting as it is' for reset()."""

    KEEP = "keep"


KEEP = _Keep.KEEP


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour for the public requests that match it.

    Without `rate` it hits the next `times` matching requests (None means 1). With `rate` each
    matching request is hit independently with that probability, drawn from `random.Random(seed)`
    when the fault has a seed and from the server's seeded generator otherwise, until it has hit
    `times` requests (None: no limit). A rate fault that doesn't fire leaves the request to the
    faults armed after it. `query_contains` is looked for in the raw query string with "&" added
    at both ends, so "&page=7&" names page 7 wherever the parameter sits.
    """

    method: str = "PUT"
    path: str = "/inventory"
    status: int | None = None
    retry_after: int | None = None
    delay: float = 0.0
    drop: str | None = None
    times: int | None = None
    if_contains_id: str | None = None
    query_contains: str | None = None
    rate: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        self._check_match()
        self._check_effect()
        self._check_schedule()

    def _check_match(self) -> None:
        """Validate (and normalise) which requests the fault applies to."""
        if not isinstance(self.method, str) or not self.method:
            raise ValueError("fault method must be a non-empty string")
        object.__setattr__(self, "method", self.method.upper())
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError("fault path must be a string starting with '/'")
        if self.if_contains_id is not None and not isinstance(self.if_contains_id, str):
            raise ValueError("fault if_contains_id must be a string")
        if self.query_contains is not None and not (
            isinstance(self.query_contains, str) and self.query_contains
        ):
            raise ValueError("fault query_contains must be a non-empty string")

    def _check_effect(self) -> None:
        """Validate what the fault does to a request it hits."""
        if self.status is not None and not (_is_int(self.status) and 200 <= self.status <= 599):
            raise ValueError("fault status must be an HTTP status code in 200..599")
        if self.retry_after is not None:
            if not (_is_int(self.retry_after) and self.retry_after >= 0):
                raise ValueError("fault retry_after must be a whole number of seconds >= 0")
            if self.status is None:
                raise ValueError("fault retry_after needs a status to go with it")
        if isinstance(self.delay, bool) or not isinstance(self.delay, int | float):
            raise ValueError("fault delay must be a number of seconds")
        if not 0 <= self.delay <= 3600:
            raise ValueError("fault delay must be between 0 and 3600 seconds")
        if self.drop not in (None, *DROP_MODES):
            raise ValueError("fault drop must be null, 'before' or 'after'")
        if self.drop == "before" and self.status is not None:
            raise ValueError("a fault that drops before handling sends no status")

    def _check_schedule(self) -> None:
        """Validate (and normalise) how often the fault fires: times, rate and seed."""
        if self.rate is not None and not (
            _is_number(self.rate) and 0 < self.rate <= 1  # NaN fails the comparison
        ):
            raise ValueError("fault rate must be a probability with 0 < rate <= 1")
        if self.seed is not None:
            if not _is_int(self.seed):
                raise ValueError("fault seed must be an integer")
            if self.rate is None:
                raise ValueError("fault seed needs a rate to go with it")
        if self.times is None and self.rate is None:
            object.__setattr__(self, "times", 1)
        if self.times is not None and not (_is_int(self.times) and self.times >= 1):
            raise ValueError("fault times must be an integer >= 1, or null for a rate fault")

    @classmethod
    def from_dict(cls, data: object) -> Fault:
        """Build a fault from a JSON object that uses the dataclass's field names."""
        return cls(**_known_fields(cls, data, "fault"))

    def matches(
        self, method: str, path: str, product_ids: tuple[str, ...], query: str = ""
    ) -> bool:
        """Whether a public request (path without query, raw query apart) is one this affects."""
        if method != self.method or not path.startswith(self.path):
            return False
        if self.query_contains is not None and self.query_contains not in f"&{query}&":
            return False
        if self.if_contains_id is None:
            return True
        return method == "PUT" and self.if_contains_id in product_ids


@dataclass(frozen=True)
class Bucket:
    """A leaky bucket like Lightspeed Retail's: requests pour in their cost, it drains steadily."""

    size: float = 60
    drip_per_second: float = 1
    get_cost: float = 1  # GET and HEAD
    put_cost: float = 10  # every other method

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not (_is_number(value) and math.isfinite(value)):
                raise ValueError(f"bucket {field.name} must be a finite number, got {value!r}")
        if self.size <= 0:
            raise ValueError("bucket size must be > 0")
        if self.drip_per_second <= 0:
            raise ValueError("bucket drip_per_second must be > 0")
        for name in ("get_cost", "put_cost"):
            if not 0 <= getattr(self, name) <= self.size:
                raise ValueError(f"bucket {name} must be between 0 and size, or it never fits")

    @classmethod
    def from_dict(cls, data: object) -> Bucket:
        """Build a bucket from a JSON object that uses the dataclass's field names."""
        return cls(**_known_fields(cls, data, "bucket"))

    def cost(self, method: str) -> float:
        """What one request pours in: get_cost for reads (GET, HEAD), put_cost for the rest."""
        return self.get_cost if method in ("GET", "HEAD") else self.put_cost

    def headers(self, level: float) -> Headers:
        """The Lightspeed headers that report a level, e.g. `12.5/60` and the drip rate."""
        return (
            (BUCKET_LEVEL_HEADER, f"{_number(level)}/{_number(self.size)}"),
            (BUCKET_DRIP_HEADER, _number(self.drip_per_second)),
        )


@dataclass(frozen=True)
class RecordedRequest:
    """One request to the public API as the sandbox saw and answered it."""

    method: str
    path: str
    status: int
    product_ids: tuple[str, ...]
    at: float
    dropped: bool = False
    bytes_in: int = 0  # the request as received: request line, headers and body
    bytes_out: int = 0  # the response body (0 when dropped)
    query: str = ""  # the raw query string, e.g. "page=2&per_page=50"


@dataclass(frozen=True)
class _Reply:
    """An encoded JSON response."""

    status: int
    body: bytes
    headers: Headers = ()


@dataclass
class _ArmedFault:
    """A fault, how many more requests it will affect (None: no limit) and its own generator."""

    fault: Fault
    remaining: int | None
    rng: random.Random | None = None

    def fires(self, shared: random.Random) -> bool:
        """Whether the fault hits a request that matches it: always, or with its rate."""
        if self.fault.rate is None:
            return True
        rng = self.rng if self.rng is not None else shared
        return rng.random() < self.fault.rate


@dataclass(frozen=True)
class _Admission:
    """The bucket's answer to one request: the level after it, and the wait if it didn't fit."""

    level: float
    retry_after: int | None = None


class _LeakyBucket:
    """A bucket's live level, drained lazily from the monotonic clock; safe across threads."""

    def __init__(self, config: Bucket, level: float = 0.0) -> None:
        self.config = config
        self._level = float(level)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def level(self) -> float:
        """The level now."""
        with self._lock:
            return self._drain()

    def pour(self, method: str) -> _Admission:
        """Add a request's cost if it fits; a request that doesn't fit adds nothing."""
        cost = self.config.cost(method)
        with self._lock:
            level = self._drain()
            overflow = level + cost - self.config.size
            if overflow > _ROOM_EPSILON:
                wait = math.ceil(overflow / self.config.drip_per_second)
                return _Admission(level, max(1, wait))
            self._level = level + cost
            return _Admission(self._level)

    def _drain(self) -> float:
        """Let the level leak for the time since the last look (call with the lock held)."""
        now = time.monotonic()
        leaked = (now - self._at) * self.config.drip_per_second
        self._level, self._at = max(0.0, self._level - leaked), now
        return self._level


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_number(value: object) -> bool:
    """An int or float, not a bool."""
    return type(value) in (int, float)


def _number(value: float) -> str:
    """A number as Lightspeed's bucket headers write it: at most 3 decimals, no trailing zeros."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _known_fields(cls: type, data: object, what: str) -> dict[str, Any]:
    """A JSON object's fields, refusing names the dataclass doesn't have."""
    if not isinstance(data, dict):
        raise ValueError(f"a {what} must be a JSON object")
    unknown = sorted(set(data) - {field.name for field in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} fields: {', '.join(map(str, unknown))}")
    return data


def _check_seed(seed: object) -> None:
    if seed is not None and not _is_int(seed):
        raise ValueError("seed must be an integer or None")


def _check_level(bucket: Bucket | None, level: object) -> None:
    if not (_is_number(level) and math.isfinite(cast(float, level))):
        raise ValueError("bucket level must be a finite number")
    if bucket is None and level != 0:
        raise ValueError("there is no bucket to fill: a level needs a bucket")
    if bucket is not None and not 0 <= cast(float, level) <= bucket.size:
        raise ValueError(f"bucket level must be between 0 and the size ({_number(bucket.size)})")


def _reply(status: int, payload: object, *headers: tuple[str, str]) -> _Reply:
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return _Reply(status, body, headers)


def _error(status: int, message: str, *headers: tuple[str, str]) -> _Reply:
    return _reply(status, {"error": message}, *headers)


def _decode_json(body: bytes) -> object:
    """Parse a request body, or return _NOT_JSON."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return _NOT_JSON


def _put_product_ids(payload: object) -> tuple[str, ...]:
    """The string ids in a PUT body's `products` list, in order."""
    if not isinstance(payload, dict) or not isinstance(payload.get("products"), list):
        return ()
    return tuple(
        item["id"]
        for item in payload["products"]
        if isinstance(item, dict) and isinstance(item.get("id"), str)
    )


def _query_int(query: dict[str, list[str]], name: str, default: int, maximum: int | None) -> int:
    """Read a positive integer query parameter, raising ValueError with a client message."""
    values = query.get(name)
    if not values:
        return default
    raw = values[-1]
    bound = f" and <= {maximum}" if maximum is not None else ""
    if not _DIGITS.fullmatch(raw) or int(raw) < 1 or (maximum is not None and int(raw) > maximum):
        raise ValueError(f"{name} must be an integer >= 1{bound}, got {raw!r}")
    return int(raw)


class SandboxServer:
    """An in-process Lightspeed-compatible API on loopback, with faults and a request log.

    `bucket` turns on a Lightspeed Retail style rate limit; `seed` seeds the generator that rate
    faults without their own seed draw from (None: seeded from the OS, so not reproducible).
    Resources accept the static `token` and any live access token of `oauth`, the token
    endpoint at /oauth/token (sandbox/oauth.py), whose access tokens last `access_token_seconds`.
    """

    def __init__(
        self,
        products: list[dict[str, Any]] | None = None,
        token: str = "sandbox-token",
        max_products_per_call: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        bucket: Bucket | None = None,
        seed: int | None = 0,
        access_token_seconds: float = DEFAULT_ACCESS_TOKEN_SECONDS,
    ) -> None:
        if not isinstance(token, str) or not token:
            raise ValueError("token must be a non-empty string")
        if not (_is_int(max_products_per_call) and max_products_per_call >= 1):
            raise ValueError("max_products_per_call must be an integer >= 1")
        _check_bucket(bucket)
        _check_seed(seed)
        self.token = token
        self.oauth = TokenIssuer(access_token_seconds=access_token_seconds)
        self.max_products_per_call = max_products_per_call
        self.host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._products: list[dict[str, Any]] = []
        self._index: dict[str, dict[str, Any]] = {}
        self._set_catalog(check_products(products or []))
        self._faults: list[_ArmedFault] = []
        self._seed = seed
        self._random = random.Random(seed)
        self._bucket = _LeakyBucket(bucket) if bucket is not None else None
        self._log: list[RecordedRequest] = []
        self._in_flight: dict[str, int] = {}  # by the token presented ("" without one)
        self._max_in_flight: dict[str, int] = {}
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._delays = threading.Event()  # set (and replaced) to answer every delayed request now
        self._arrivals: dict[str, int] = {}  # public requests received, by path, before any fault
        self._arrived = threading.Condition(self._lock)
        self._httpd: _SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> SandboxServer:
        """Bind the socket and serve in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("the sandbox is already running")
        if self._stopping.is_set():
            raise RuntimeError("a stopped sandbox cannot be restarted; create a new one")
        httpd = _SandboxHTTPServer((self.host, self._requested_port), self)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-{httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection."""
        self._stopping.set()
        self._delays.set()
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (only while running)."""
        if self._httpd is None:
            raise RuntimeError("the sandbox is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the public API, e.g. http://127.0.0.1:12345."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # state, for tests

    def quantities(self) -> dict[str, int]:
        """Current quantity of every product, by id."""
        with self._lock:
            return {product["id"]: product["quantity"] for product in self._products}

    def requests(self) -> list[RecordedRequest]:
        """Every answered (or dropped) public request, in order of arrival."""
        with self._lock:
            return sorted(self._log, key=lambda request: request.at)

    def max_in_flight(self) -> dict[str, int]:
        """Per token presented: the most public requests it had in flight at once since a reset."""
        with self._lock:
            return dict(self._max_in_flight)

    def wait_for_arrivals(self, path: str, count: int, timeout: float) -> bool:
        """Wait until `count` public requests to `path` have arrived (answered or not yet)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self._arrivals.get(path, 0) >= count, timeout)

    def arrivals(self, path: str) -> int:
        """Public requests to `path` received so far, held by a fault or not."""
        with self._lock:
            return self._arrivals.get(path, 0)

    def faults(self) -> list[Fault]:
        """Faults still armed, with `times` set to the uses left (None: no limit)."""
        with self._lock:
            return [replace(armed.fault, times=armed.remaining) for armed in self._faults]

    def add_fault(self, fault: Fault) -> None:
        """Arm a fault after those already armed."""
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, got {type(fault).__name__}")
        rng = random.Random(fault.seed) if fault.seed is not None else None
        with self._lock:
            self._faults.append(_ArmedFault(fault, fault.times, rng))

    def end_delays(self) -> None:
        """Disarm every fault with a delay and let the requests they hold go on at once.

        A test can hold a run's requests with a long delay until something else has happened,
        rather than betting on a short delay being long enough on a busy machine.
        """
        with self._lock:
            self._faults = [armed for armed in self._faults if not armed.fault.delay]
            held, self._delays = self._delays, threading.Event()
        held.set()

    def bucket(self) -> Bucket | None:
        """The rate limit's configuration, or None when it is off."""
        bucket = self._bucket
        return bucket.config if bucket is not None else None

    def bucket_level(self) -> float | None:
        """How full the bucket is now, or None when it is off."""
        bucket = self._bucket
        return bucket.level() if bucket is not None else None

    def set_bucket(self, bucket: Bucket | None, level: float = 0.0) -> None:
        """Turn the rate limit on with this bucket, starting at `level`, or off with None."""
        _check_bucket(bucket)
        _check_level(bucket, level)
        with self._lock:
            self._bucket = _LeakyBucket(bucket, level) if bucket is not None else None

    def upsert_products(self, products: list[dict[str, Any]]) -> None:
        """Add products (at the end) or replace them by id (in place, keeping unset quantities)."""
        self._change_catalog(products, [])

    def remove_products(self, ids: Iterable[str]) -> None:
        """Delete products by id; every id must be in the catalog, or nothing is removed."""
        if isinstance(ids, str):
            raise TypeError("remove_products takes a list of ids, not one string")
        self._change_catalog([], list(ids))

    def reset(
        self,
        products: list[dict[str, Any]] | None = None,
        *,
        bucket: Bucket | _Keep | None = KEEP,
        seed: int | _Keep | None = KEEP,
    ) -> None:
        """Clear faults, the request log and the bucket's level, and re-seed the rate faults.

        The catalog, the bucket's configuration (None turns it off) and the seed are kept unless
        given, so a run after a reset sees the same rate faults as a run on a new server.
        """
        checked = check_products(products) if products is not None else None
        if bucket is not KEEP:
            _check_bucket(bucket)
        if seed is not KEEP:
            _check_seed(seed)
        with self._lock:
            self._faults.clear()
            self._log.clear()
            self._max_in_flight = {t: n for t, n in self._in_flight.items() if n}
            if checked is not None:
                self._set_catalog(checked)
            config = self.bucket() if bucket is KEEP else bucket
            self._bucket = _LeakyBucket(config) if config is not None else None
            if seed is not KEEP:
                self._seed = seed
            self._random = random.Random(self._seed)

    # request handling (called from handler threads)

    def _set_catalog(self, products: list[dict[str, Any]]) -> None:
        self._products = products
        self._index = {product["id"]: product for product in products}

    def _change_catalog(self, upsert: list[dict[str, Any]], remove: list[str]) -> int:
        """Apply an upsert and a removal together and count the products, or raise ValueError."""
        with self._lock:
            self._set_catalog(merge_products(self._products, upsert, remove))
            return len(self._products)

    def _track(self, connection: socket.socket, is_open: bool) -> None:
        with self._lock:
            if is_open:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _take_fault(
        self, method: str, path: str, query: str, product_ids: tuple[str, ...]
    ) -> Fault | None:
        """The first armed fault that matches the request and fires, using up one of its times."""
        with self._lock:
            for armed in self._faults:
                if not armed.fault.matches(method, path, product_ids, query):
                    continue
                if not armed.fires(self._random):
                    continue
                if armed.remaining is not None:
                    armed.remaining -= 1
                    if armed.remaining <= 0:
                        self._faults.remove(armed)
                return armed.fault
        return None

    def _charge(self, method: str) -> tuple[_Reply | None, Headers]:
        """Pour a public request into the bucket: the 429 if it's full, and headers for any reply."""
        bucket = self._bucket  # read once: set_bucket and reset swap the whole object
        if bucket is None:
            return None, ()
        admission = bucket.pour(method)
        headers = bucket.config.headers(admission.level)
        if admission.retry_after is None:
            return None, headers
        retry_after = ("Retry-After", str(admission.retry_after))
        return _error(429, "rate limited: bucket full", retry_after), headers

    @contextlib.contextmanager
    def _counted(self, token: str) -> Iterator[None]:
        """Count a public request as in flight, for its token, until it is answered or dropped."""
        with self._lock:
            now = self._in_flight[token] = self._in_flight.get(token, 0) + 1
            self._max_in_flight[token] = max(now, self._max_in_flight.get(token, 0))
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[token] -= 1

    def _arrive(self, path: str) -> None:
        with self._arrived:
            self._arrivals[path] = self._arrivals.get(path, 0) + 1
            self._arrived.notify_all()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._log.append(request)

    def _public_reply(
        self, method: str, path: str, query: str, authorization: str | None, payload: object
    ) -> _Reply:
        allowed = PUBLIC_ROUTES.get(path)
        if allowed is None:
            return _error(404, f"no such resource: {path}")
        if method != allowed:
            return _error(405, f"{method} is not allowed on {path}", ("Allow", allowed))
        if path == TOKEN_PATH:
            status, body = self.oauth.answer(authorization, _form(payload))
            return _reply(status, body, ("Cache-Control", "no-store"))
        problem = self._auth_problem(authorization)
        if problem is not None:
            return _error(401, problem, ("WWW-Authenticate", "Bearer"))
        if method == "GET":
            return self._list_products(query)
        return self._put_inventory(payload)

    def _auth_problem(self, authorization: str | None) -> str | None:
        if not authorization:
            return "missing Authorization header"
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return "Authorization must be 'Bearer <token>'"
        presented = credentials.strip().encode("utf-8", "surrogateescape")
        if hmac.compare_digest(presented, self.token.encode("utf-8")):
            return None
        if self.oauth.accepts(credentials.strip()):
            return None
        return "invalid token"

    def _list_products(self, query: str) -> _Reply:
        params = parse_qs(query, keep_blank_values=True)
        try:
            page = _query_int(params, "page", 1, None)
            per_page = _query_int(params, "per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)
        except ValueError as problem:
            return _error(400, str(problem))
        start = (page - 1) * per_page
        with self._lock:
            more = start + per_page < len(self._products)
            next_link = f"/products?page={page + 1}&per_page={per_page}" if more else None
            # Encoded under the lock so a page is a consistent snapshot.
            return _reply(
                200, {"products": self._products[start : start + per_page], "next": next_link}
            )

    def _put_inventory(self, payload: object) -> _Reply:
        if payload is _NO_BODY:
            return _error(400, "body is empty")
        if payload is _NOT_JSON:
            return _error(400, "body is not valid JSON")
        if not isinstance(payload, dict):
            return _error(400, "body must be a JSON object")
        if "products" not in payload:
            return _error(400, "body has no 'products'")
        items = payload["products"]
        if not isinstance(items, list):
            return _error(400, "'products' must be a list")
        for position, item in enumerate(items):
            if not isinstance(item, dict):
                return _error(400, f"products[{position}] is not an object")
            if not isinstance(item.get("id"), str):
                return _error(400, f"products[{position}] has no string 'id'")
            if "quantity" not in item:
                return _error(400, f"products[{position}] has no 'quantity'")
        if len(items) > self.max_products_per_call:
            return _error(
                413, f"too many products in one call: {len(items)} > {self.max_products_per_call}"
            )
        with self._lock:
            problems: list[dict[str, str]] = []
            seen: set[str] = set()
            for item in items:
                product_id, quantity = item["id"], item["quantity"]
                if product_id not in self._index:
                    problems.append({"id": product_id, "error": "unknown product id"})
                elif not is_valid_quantity(quantity):
                    problems.append({"id": product_id, "error": "invalid quantity"})
                elif product_id in seen:
                    problems.append({"id": product_id, "error": "duplicate id"})
                seen.add(product_id)
            if problems:
                return _reply(422, {"products": problems})
            for item in items:
                self._index[item["id"]]["quantity"] = item["quantity"]
        return _reply(200, {"updated": len(items)})

    def _control_reply(self, method: str, path: str, payload: object) -> _Reply:
        allowed = CONTROL_ROUTES.get(path)
        if allowed is None:
            return _error(404, f"no such control endpoint: {path}")
        if method not in allowed:
            return _error(405, f"{method} is not allowed on {path}", ("Allow", ", ".join(allowed)))
        if path == "/_sandbox/quantities":
            return _reply(200, {"quantities": self.quantities()})
        if path == "/_sandbox/requests":
            rows = [
                {**asdict(request), "product_ids": list(request.product_ids)}
                for request in self.requests()
            ]
            return _reply(200, {"requests": rows})
        if path == "/_sandbox/in-flight":
            return _reply(200, {"max_in_flight": self.max_in_flight()})
        if path.startswith("/_sandbox/oauth"):
            return self._control_oauth(method, path, payload)
        if path == "/_sandbox/faults" and method == "GET":
            return _reply(200, {"faults": [asdict(fault) for fault in self.faults()]})
        if path == "/_sandbox/bucket" and method == "GET":
            return self._bucket_state()
        try:
            if path == "/_sandbox/faults":
                return self._control_faults(payload)
            if path == "/_sandbox/bucket":
                return self._control_bucket(payload)
            if path == "/_sandbox/products":
                return self._control_products(payload)
            return self._control_reset(payload)
        except (TypeError, ValueError) as problem:
            return _error(400, str(problem))

    def _bucket_state(self) -> _Reply:
        bucket = self._bucket
        if bucket is None:
            return _reply(200, {"bucket": None, "level": None})
        return _reply(200, {"bucket": asdict(bucket.config), "level": bucket.level()})

    def _control_faults(self, payload: object) -> _Reply:
        if payload is _NOT_JSON or payload is _NO_BODY:
            raise ValueError("body must be a fault object or a list of them")
        faults = [Fault.from_dict(item) for item in _as_list(payload)]
        for fault in faults:
            self.add_fault(fault)
        return _reply(200, {"added": len(faults)})

    def _control_bucket(self, payload: object) -> _Reply:
        if payload is None:
            self.set_bucket(None)
            return self._bucket_state()
        if not isinstance(payload, dict):
            raise ValueError('body must be a bucket object (optionally with a "level") or null')
        fields_only = {name: value for name, value in payload.items() if name != "level"}
        self.set_bucket(Bucket.from_dict(fields_only), payload.get("level", 0.0))
        return self._bucket_state()

    def _control_products(self, payload: object) -> _Reply:
        if not isinstance(payload, dict) or not set(payload) <= {"upsert", "remove"}:
            raise ValueError('body must be {"upsert": [products], "remove": [ids]} (either may go)')
        upsert, remove = payload.get("upsert", []), payload.get("remove", [])
        total = self._change_catalog(upsert, remove)
        return _reply(200, {"upserted": len(upsert), "removed": len(remove), "products": total})

    def _control_oauth(self, method: str, path: str, payload: object) -> _Reply:
        """Hand out a first refresh token, revoke everything, set the lifetime, or report."""
        if path == "/_sandbox/oauth/grant":
            return _reply(200, {"refresh_token": self.oauth.grant()})
        if path == "/_sandbox/oauth/revoke":
            self.oauth.revoke_all()
        elif method == "POST":
            if not (isinstance(payload, dict) and set(payload) == {"access_token_seconds"}):
                return _error(400, 'body must be {"access_token_seconds": <seconds>}')
            try:
                self.oauth.set_lifetime(payload["access_token_seconds"])
            except ValueError as problem:
                return _error(400, str(problem))
        return _reply(200, asdict(self.oauth.stats()))

    def _control_reset(self, payload: object) -> _Reply:
        if payload is _NO_BODY:
            self.reset()
            return _reply(200, {"reset": True})
        if not isinstance(payload, dict) or not set(payload) <= {"products", "bucket", "seed"}:
            raise ValueError(
                'reset takes no body, or an object with any of "products", "bucket", "seed"'
            )
        if "products" in payload and not isinstance(payload["products"], list):
            raise ValueError('reset "products" must be a list')
        bucket = payload.get("bucket", KEEP)
        if bucket is not KEEP and bucket is not None:
            bucket = Bucket.from_dict(bucket)
        self.reset(payload.get("products"), bucket=bucket, seed=payload.get("seed", KEEP))
        return _reply(200, {"reset": True})


def _bearer(authorization: str | None) -> str:
    """The token a request presents ("" when it presents none): what "an account" is here."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def _form(payload: object) -> dict[str, str]:
    """A form-encoded body as its fields (the last value of a repeated one)."""
    if not isinstance(payload, bytes):
        return {}
    try:
        fields = parse_qs(payload.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}
    return {name: values[-1] for name, values in fields.items()}


def _as_list(payload: object) -> list[object]:
    return payload if isinstance(payload, list) else [payload]


def _check_bucket(bucket: object) -> None:
    if bucket is not None and not isinstance(bucket, Bucket):
        raise TypeError(f"expected a Bucket or None, got {type(bucket).__name__}")


def _fault_reply(fault: Fault) -> _Reply:
    """The answer an injected status fault gives in place of the real one."""
    retry_after = () if fault.retry_after is None else (("Retry-After", str(fault.retry_after)),)
    return _error(cast(int, fault.status), f"injected fault: {fault.status}", *retry_after)


class _SandboxHTTPServer(ThreadingHTTPServer):
    """The listening socket and its thread-per-connection dispatch."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: SandboxServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sandbox = sandbox
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup; loopback needs none.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        if _logging_enabled():
            super().handle_error(request, client_address)


def _logging_enabled() -> bool:
    return os.environ.get("SANDBOX_LOG") == "1"


class _Handler(BaseHTTPRequestHandler):
    """Turns one HTTP/1.1 connection's requests into sandbox calls."""

    protocol_version = "HTTP/1.1"
    server_version = "LightspeedSandbox/1.0"
    raw_requestline: bytes  # set by BaseHTTPRequestHandler.handle_one_request; not in typeshed
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # headers and body leave in one send
    timeout = 120  # an idle keep-alive connection doesn't hold its thread forever

    @property
    def sandbox(self) -> SandboxServer:
        return cast(_SandboxHTTPServer, self.server).sandbox

    def setup(self) -> None:
        super().setup()
        self.sandbox._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.sandbox._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        if _logging_enabled():
            super().log_message(format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self.close_connection = True
        self._send(_error(code, message or HTTPStatus(code).phrase, ("Connection", "close")))

    def handle_expect_100(self) -> bool:
        accepted = super().handle_expect_100()
        self.wfile.flush()  # the buffered writer would otherwise hold "100 Continue" back
        return accepted

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        at = time.monotonic()
        target = urlsplit(self.path)
        body = self._read_body()
        if target.path == CONTROL_PREFIX or target.path.startswith(CONTROL_PREFIX + "/"):
            if isinstance(body, _Reply):
                self._send(body)
                return
            payload = _decode_json(body) if body else _NO_BODY
            self._send(self.sandbox._control_reply(self.command, target.path, payload))
            return
        with self.sandbox._counted(_bearer(self.headers.get("Authorization"))):
            self._serve_public(target.path, target.query, body, at)

    def _serve_public(self, path: str, query: str, body: bytes | _Reply, at: float) -> None:
        """Charge the bucket, apply a fault if one fires, answer and log the request."""
        method = self.command
        self.sandbox._arrive(path)
        refused: _Reply | None = None
        bucket_headers: Headers = ()
        if path != TOKEN_PATH:  # the accounts server is not under the API's rate limit
            refused, bucket_headers = self.sandbox._charge(method)
        if isinstance(body, _Reply):
            head = self._head_bytes()
            request = RecordedRequest(method, self.path, 0, (), at, False, head, 0, query)
            self._answer(request, refused if refused is not None else body, bucket_headers)
            return
        payload: object = body if path == TOKEN_PATH else _decode_json(body) if body else _NO_BODY
        product_ids = _put_product_ids(payload) if method == "PUT" else ()
        bytes_in = self._head_bytes() + len(body)
        request = RecordedRequest(method, self.path, 0, product_ids, at, False, bytes_in, 0, query)
        if refused is not None:  # the bucket is in front: a refused request meets no fault
            self._answer(request, refused, bucket_headers)
            return
        fault = self.sandbox._take_fault(method, path, query, product_ids)
        if fault is not None and fault.delay:
            self.sandbox._delays.wait(fault.delay)
        if fault is not None and fault.drop == "before":
            self._answer(replace(request, dropped=True), None, ())
            return
        if fault is not None and fault.status is not None:
            reply = _fault_reply(fault)
        else:
            authorization = self.headers.get("Authorization")
            reply = self.sandbox._public_reply(method, path, query, authorization, payload)
        dropped = fault is not None and fault.drop == "after"
        self._answer(replace(request, dropped=dropped), reply, bucket_headers)

    def _answer(self, request: RecordedRequest, reply: _Reply | None, headers: Headers) -> None:
        """Log a public request with its outcome, then send the reply or drop the connection."""
        status = reply.status if reply is not None else 0
        if reply is None or request.dropped:
            self.sandbox._record(replace(request, status=status, dropped=True, bytes_out=0))
            self._drop()
            return
        self.sandbox._record(replace(request, status=status, bytes_out=len(reply.body)))
        self._send(replace(reply, headers=reply.headers + headers))

    def _head_bytes(self) -> int:
        """Bytes of the request line and headers as received (CRLF line ends)."""
        lines = [f"{name}: {value}" for name, value in self.headers.items()]
        return len(self.raw_requestline) + sum(len(line.encode()) + 2 for line in lines) + 2

    def _read_body(self) -> bytes | _Reply:
        """The request body, or the reply to send when it can't be read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return _error(411, "send a Content-Length, not a chunked body", ("Connection", "close"))
        length = self.headers.get("Content-Length", "0").strip()
        if not _DIGITS.fullmatch(length):
            self.close_connection = True
            return _error(400, "bad Content-Length", ("Connection", "close"))
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            return _error(413, "request body too large", ("Connection", "close"))
        body = self.rfile.read(int(length)) if int(length) else b""
        if len(body) < int(length):
            self.close_connection = True
            return _error(400, "body shorter than its Content-Length", ("Connection", "close"))
        return body

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if self.close_connection and all(name != "Connection" for name, _ in reply.headers):
            self.send_header("Connection", "close")  # e.g. a bucket 429 to an unread body
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _drop(self) -> None:
        """Close the TCP connection without a response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()


def serve(
    host: str,
    port: int,
    catalog_path: str | None,
    token: str,
    max_products_per_call: int,
    *,
    token_source: str | None = None,
    bucket: Bucket | None = None,
    access_token_seconds: float = DEFAULT_ACCESS_TOKEN_SECONDS,
) -> None:
    """Serve the sandbox API until SIGINT or SIGTERM, rate limited if a bucket is given."""
    if token_source is None:
        token_source = _guess_token_source(token)
    products = load_catalog(catalog_path) if catalog_path else []
    sandbox = SandboxServer(
        products,
        token,
        max_products_per_call,
        host,
        port,
        bucket=bucket,
        access_token_seconds=access_token_seconds,
    )
    limit = (
        ""
        if bucket is None
        else f", bucket {_number(bucket.size)} draining {_number(bucket.drip_per_second)}/s"
    )
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
    try:
        sandbox.start()
        print(
            f"Sandbox Lightspeed API on {sandbox.url} "
            f"({len(products)} products, token from {token_source}{limit}; OAuth at "
            f"{sandbox.url}{TOKEN_PATH}, access tokens for {_number(access_token_seconds)}s)",
            file=sys.stdout,
            flush=True,
        )
        while not stop_requested.wait(0.5):
            pass
    finally:
        sandbox.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _guess_token_source(token: str) -> str:
    """Say where the token probably came from, without revealing it."""
    if os.environ.get("LIGHTSPEED_TOKEN") == token:
        return "$LIGHTSPEED_TOKEN"
    if token == "sandbox-token":
        return "the built-in default"
    return "the caller"
