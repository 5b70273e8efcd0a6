"""A small WMS stock API on loopback for the tests: three pagination styles, API key, faults."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_KEY = "wms-test-key"


@dataclass
class Fault:
    """Answer the next `times` requests whose path and query contain `when` with `status`.

    `body` is sent as JSON; bytes are sent as they are (JSON written by hand).
    """

    when: str
    status: int
    times: int = 1
    body: Any = None


class WmsServer:
    """Serves `records` at /stock/paged (page numbers), /stock/cursor and /stock/linked (`next`).

    Every endpoint wants `X-Api-Key`; `requests` records (path?query, status) of each call.
    """

    def __init__(self, records: list[dict[str, Any]], page_size: int = 2) -> None:
        self.records = records
        self.page_size = page_size
        self.requests: list[tuple[str, int]] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> WmsServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.shutdown()
        self._http.server_close()

    def fail(self, when: str, status: int, times: int = 1, body: Any = None) -> None:
        self.faults.append(Fault(when, status, times, body))

    def answer(self, target: str, api_key: str | None) -> tuple[int, Any]:
        """Status and JSON body for one GET."""
        with self._lock:
            for fault in self.faults:
                if fault.times and fault.when in target:
                    fault.times -= 1
                    return fault.status, fault.body or {"error": f"injected {fault.status}"}
        if api_key != API_KEY:
            return 401, {"error": "invalid API key"}
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        size = int(query.get("per_page", self.page_size))
        if parts.path == "/stock/paged":
            start = (int(query.get("page", "1")) - 1) * size
            return 200, {"data": {"items": self.records[start : start + size]}}
        if parts.path == "/stock/cursor":
            start = int(query.get("cursor", "0"))
            end = start + size
            cursor = str(end) if end < len(self.records) else None
            return 200, {"items": self.records[start:end], "meta": {"next_cursor": cursor}}
        if parts.path == "/stock/linked":
            start = int(query.get("offset", "0"))
            end = start + size
            following = f"/stock/linked?offset={end}" if end < len(self.records) else None
            return 200, {"results": self.records[start:end], "links": {"next": following}}
        return 404, {"error": f"no such endpoint: {parts.path}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = server.answer(self.path, self.headers.get("X-Api-Key"))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                with server._lock:
                    server.requests.append((self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
