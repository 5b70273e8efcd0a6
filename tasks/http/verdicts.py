"""What every HTTP client here concludes from a call: transient or not, and the server's own words.

The Lightspeed client and the WMS reader share these rules; each turns them into its own errors.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "inventory-sync/0.1"
MESSAGE_KEYS = ("error", "message", "detail", "title")


class Unreachable(Exception):
    """A timeout or a dropped connection: no answer at all, so the same call may succeed later."""


def is_transient(status: int) -> bool:
    """429, 5xx and the other statuses that say "not now" rather than "never"."""
    return status in RETRYABLE_STATUSES or status >= 500


def send(http: httpx.Client, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
    """Send one request; a timeout or a transport failure becomes Unreachable, naming the call."""
    try:
        return http.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise Unreachable(f"{what}: timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise Unreachable(f"{what}: connection failed ({type(exc).__name__}: {exc})") from None


def json_or_none(response: httpx.Response) -> Any:
    """The body as JSON, or None when it is not JSON."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def server_message(response: httpx.Response) -> str:
    """The server's own explanation: a JSON error field, else the start of the body."""
    body = json_or_none(response)
    if isinstance(body, dict):
        for key in MESSAGE_KEYS:
            if isinstance(body.get(key), str):
                return str(body[key])
    text = response.text.strip()
    return text[:300] if text else response.reason_phrase


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After in seconds; None when absent or an HTTP date (the caller's backoff applies)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
