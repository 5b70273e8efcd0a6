"""A local Lightspeed-compatible HTTP API with fault injection, for tests, demos and benchmarks."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from sandbox.catalog import check_products, is_valid_quantity, load_catalog

__all__ = ["Fault", "RecordedRequest", "SandboxServer", "load_catalog", "serve"]

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 1000
MAX_BODY_BYTES = 64 * 1024 * 1024
CONTROL_PREFIX = "/_sandbox"
DROP_MODES = ("before", "after")
PUBLIC_ROUTES = {"/products": "GET", "/inventory": "PUT"}
CONTROL_ROUTES = {
    "/_sandbox/quantities": ("GET",),
    "/_sandbox/requests": ("GET",),
    "/_sandbox/faults": ("GET", "POST"),
    "/_sandbox/reset": ("POST",),
}
_DIGITS = re.compile(r"[0-9]{1,18}")
_NOT_JSON = object()
_NO_BODY = object()


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, applied to the next `times` public requests that match it."""

    method: str = "PUT"
    path: str = "/inventory"
    status: int | None = None
    retry_after: int | None = None
    delay: float = 0.0
    drop: str | None = None
    times: int = 1
    if_contains_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ValueError("fault method must be a non-empty string")
        object.__setattr__(self, "method", self.method.upper())
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError("fault path must be a string starting with '/'")
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
        if not (_is_int(self.times) and self.times >= 1):
            raise ValueError("fault times must be an integer >= 1")
        if self.if_contains_id is not None and not isinstance(self.if_contains_id, str):
            raise ValueError("fault if_contains_id must be a string")

    @classmethod
    def from_dict(cls, data: object) -> Fault:
        """Build a fault from a JSON object that uses the dataclass's field names."""
        if not isinstance(data, dict):
            raise ValueError("a fault must be a JSON object")
        unknown = sorted(set(data) - {field.name for field in fields(cls)})
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(map(str, unknown))}")
        return cls(**data)

    def matches(self, method: str, path: str, product_ids: tuple[str, ...]) -> bool:
        """Whether a public request (path without query) is one this fault affects."""
        if method != self.method or not path.startswith(self.path):
            return False
        if self.if_contains_id is None:
            return True
        return method == "PUT" and self.if_contains_id in product_ids


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


@dataclass(frozen=True)
class _Reply:
    """An encoded JSON response."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class _ArmedFault:
    """A fault and how many more requests it will affect."""

    fault: Fault
    remaining: int


def _is_int(value: object) -> bool:
    return type(value) is int


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
    """An in-process Lightspeed-compatible API on loopback, with faults and a request log."""

    def __init__(
        self,
        products: list[dict[str, Any]] | None = None,
        token: str = "sandbox-token",
        max_products_per_call: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not isinstance(token, str) or not token:
            raise ValueError("token must be a non-empty string")
        if not (_is_int(max_products_per_call) and max_products_per_call >= 1):
            raise ValueError("max_products_per_call must be an integer >= 1")
        self.token = token
        self.max_products_per_call = max_products_per_call
        self.host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._products: list[dict[str, Any]] = []
        self._index: dict[str, dict[str, Any]] = {}
        self._set_catalog(check_products(products or []))
        self._faults: list[_ArmedFault] = []
        self._log: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
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

    def faults(self) -> list[Fault]:
        """Faults still armed, with `times` set to the uses left."""
        with self._lock:
            return [replace(armed.fault, times=armed.remaining) for armed in self._faults]

    def add_fault(self, fault: Fault) -> None:
        """Arm a fault after those already armed."""
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, got {type(fault).__name__}")
        with self._lock:
            self._faults.append(_ArmedFault(fault, fault.times))

    def reset(self, products: list[dict[str, Any]] | None = None) -> None:
        """Clear faults and the request log; replace the catalog if products are given."""
        checked = check_products(products) if products is not None else None
        with self._lock:
            self._faults.clear()
            self._log.clear()
            if checked is not None:
                self._set_catalog(checked)

    # request handling (called from handler threads)

    def _set_catalog(self, products: list[dict[str, Any]]) -> None:
        self._products = products
        self._index = {product["id"]: product for product in products}

    def _track(self, connection: socket.socket, is_open: bool) -> None:
        with self._lock:
            if is_open:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _take_fault(self, method: str, path: str, product_ids: tuple[str, ...]) -> Fault | None:
        with self._lock:
            for armed in self._faults:
                if armed.fault.matches(method, path, product_ids):
                    armed.remaining -= 1
                    if armed.remaining <= 0:
                        self._faults.remove(armed)
                    return armed.fault
        return None

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
        if not hmac.compare_digest(presented, self.token.encode("utf-8")):
            return "invalid token"
        return None

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
        if path == "/_sandbox/faults" and method == "GET":
            return _reply(200, {"faults": [asdict(fault) for fault in self.faults()]})
        if path == "/_sandbox/faults":
            if payload is _NOT_JSON or payload is _NO_BODY:
                return _error(400, "body must be a fault object or a list of them")
            try:
                faults = [Fault.from_dict(item) for item in _as_list(payload)]
            except (TypeError, ValueError) as problem:
                return _error(400, str(problem))
            for fault in faults:
                self.add_fault(fault)
            return _reply(200, {"added": len(faults)})
        return self._control_reset(payload)

    def _control_reset(self, payload: object) -> _Reply:
        products = None
        if payload is not _NO_BODY:
            if not isinstance(payload, dict) or not isinstance(payload.get("products"), list):
                return _error(400, 'reset takes no body, or {"products": [...]}')
            products = payload["products"]
        try:
            self.reset(products)
        except ValueError as problem:
            return _error(400, str(problem))
        return _reply(200, {"reset": True})


def _as_list(payload: object) -> list[object]:
    return payload if isinstance(payload, list) else [payload]


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
        method = self.command
        target = urlsplit(self.path)
        path = target.path
        is_control = path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")
        body = self._read_body()
        if isinstance(body, _Reply):
            if not is_control:
                self.sandbox._record(
                    RecordedRequest(
                        method,
                        self.path,
                        body.status,
                        (),
                        at,
                        False,
                        self._head_bytes(),
                        len(body.body),
                    )
                )
            self._send(body)
            return
        bytes_in = self._head_bytes() + len(body)
        payload = _decode_json(body) if body else _NO_BODY
        if is_control:
            self._send(self.sandbox._control_reply(method, path, payload))
            return
        product_ids = _put_product_ids(payload) if method == "PUT" else ()
        fault = self.sandbox._take_fault(method, path, product_ids)
        if fault is not None and fault.delay:
            self.sandbox._stopping.wait(fault.delay)
        if fault is not None and fault.drop == "before":
            self.sandbox._record(
                RecordedRequest(method, self.path, 0, product_ids, at, True, bytes_in)
            )
            self._drop()
            return
        if fault is not None and fault.status is not None:
            retry_after = (
                () if fault.retry_after is None else (("Retry-After", str(fault.retry_after)),)
            )
            reply = _error(fault.status, f"injected fault: {fault.status}", *retry_after)
        else:
            authorization = self.headers.get("Authorization")
            reply = self.sandbox._public_reply(method, path, target.query, authorization, payload)
        dropped = fault is not None and fault.drop == "after"
        self.sandbox._record(
            RecordedRequest(
                method,
                self.path,
                reply.status,
                product_ids,
                at,
                dropped,
                bytes_in,
                0 if dropped else len(reply.body),
            )
        )
        if dropped:
            self._drop()
        else:
            self._send(reply)

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
) -> None:
    """Serve the sandbox API until SIGINT or SIGTERM."""
    if token_source is None:
        token_source = _guess_token_source(token)
    products = load_catalog(catalog_path) if catalog_path else []
    sandbox = SandboxServer(products, token, max_products_per_call, host, port)
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
            f"({len(products)} products, token from {token_source})",
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
