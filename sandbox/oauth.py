"""The sandbox's OAuth token endpoint: short-lived access tokens and single-use refresh tokens.

It behaves as Lightspeed documents its own: `POST /oauth/token`, form-encoded,
`grant_type=refresh_token&refresh_token=...`, the client authenticated by HTTP Basic or by
`client_id`/`client_secret` form fields; each answer carries a new refresh token, and issuing it
revokes the one presented. It counts every refresh token presented a second time, the mistake
a client of rotating tokens must never make.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote

TOKEN_PATH = "/oauth/token"
DEFAULT_CLIENT_ID = "sandbox-client"
DEFAULT_CLIENT_SECRET = "sandbox-client-secret"
DEFAULT_ACCESS_TOKEN_SECONDS = 900.0  # Lightspeed's documented 15 minutes


@dataclass(frozen=True)
class TokenStats:
    """What the token endpoint did since the server started."""

    refreshes: int  # new tokens issued
    reused: int  # refresh tokens presented again after their first use
    rejected: int  # refresh requests refused (bad grant or bad client)
    grants: int  # initial refresh tokens handed out, as Lightspeed's API setup does
    revocations: int  # admin calls that revoked everything
    access_token_seconds: float


class TokenIssuer:
    """Issues, rotates and checks tokens; safe across handler threads."""

    def __init__(
        self,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        access_token_seconds: float = DEFAULT_ACCESS_TOKEN_SECONDS,
    ) -> None:
        _check_lifetime(access_token_seconds)
        self.client_id = client_id
        self.client_secret = client_secret
        self._lifetime = float(access_token_seconds)
        self._lock = threading.Lock()
        self._access: dict[str, float] = {}  # access token -> monotonic expiry
        self._live: set[str] = set()  # refresh tokens that may be presented (once)
        self._presented: set[str] = set()  # refresh tokens presented at least once
        self._issued: list[str] = []  # every token handed out, for tests that look for leaks
        self._refreshes = self._reused = self._rejected = self._grants = self._revocations = 0

    def grant(self) -> str:
        """A new live refresh token, as the platform's API setup hands one to a supplier."""
        token = _new("rt")
        with self._lock:
            self._live.add(token)
            self._issued.append(token)
            self._grants += 1
        return token

    def revoke_all(self) -> None:
        """Revoke every refresh and access token (a supplier's access withdrawn)."""
        with self._lock:
            self._live.clear()
            self._access.clear()
            self._revocations += 1

    def expire_access_tokens(self) -> None:
        """End every access token now, as time would (refresh tokens stay as they are)."""
        with self._lock:
            self._access.clear()

    def set_lifetime(self, seconds: float) -> None:
        """How long access tokens issued from now on last."""
        _check_lifetime(seconds)
        with self._lock:
            self._lifetime = float(seconds)

    def accepts(self, access_token: str) -> bool:
        """Whether an access token was issued here and has not expired or been revoked."""
        with self._lock:
            expiry = self._access.get(access_token)
            if expiry is None:
                return False
            if time.monotonic() >= expiry:
                del self._access[access_token]
                return False
            return True

    def stats(self) -> TokenStats:
        with self._lock:
            return TokenStats(
                self._refreshes,
                self._reused,
                self._rejected,
                self._grants,
                self._revocations,
                self._lifetime,
            )

    def issued(self) -> list[str]:
        """Every access and refresh token handed out (tests search logs and databases for them)."""
        with self._lock:
            return list(self._issued)

    def answer(
        self, authorization: str | None, form: dict[str, str]
    ) -> tuple[int, dict[str, object]]:
        """The token endpoint's status and JSON body for one form-encoded request."""
        client = _basic_client(authorization) or (form.get("client_id"), form.get("client_secret"))
        if not self._client_ok(*client):
            return self._refuse(401, "invalid_client", "client authentication failed")
        if form.get("grant_type") != "refresh_token":
            return self._refuse(400, "unsupported_grant_type", "grant_type must be refresh_token")
        presented = form.get("refresh_token", "")
        if not presented:
            return self._refuse(400, "invalid_request", "refresh_token is required")
        with self._lock:
            if presented in self._presented:
                self._reused += 1
            self._presented.add(presented)
            if presented not in self._live:
                self._rejected += 1
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "refresh token is invalid, expired or revoked",
                }
            self._live.discard(presented)  # revoked by its successor, issued now
            access, refresh = _new("at"), _new("rt")
            self._live.add(refresh)
            self._access[access] = time.monotonic() + self._lifetime
            self._issued += [access, refresh]
            self._refreshes += 1
            lifetime = self._lifetime
        return 200, {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(lifetime) if lifetime == int(lifetime) else lifetime,
            "refresh_token": refresh,
            "scope": "inventory",
        }

    def _client_ok(self, client_id: str | None, client_secret: str | None) -> bool:
        if client_id is None or client_secret is None:
            return False
        return hmac.compare_digest(client_id.encode(), self.client_id.encode()) and (
            hmac.compare_digest(client_secret.encode(), self.client_secret.encode())
        )

    def _refuse(self, status: int, error: str, description: str) -> tuple[int, dict[str, object]]:
        with self._lock:
            self._rejected += 1
        return status, {"error": error, "error_description": description}


def _new(kind: str) -> str:
    return f"{kind}-{secrets.token_urlsafe(24)}"


def _check_lifetime(seconds: object) -> None:
    if type(seconds) not in (int, float) or not 0 < seconds <= 86400:  # type: ignore[operator]
        raise ValueError("access_token_seconds must be a number of seconds in (0, 86400]")


def _basic_client(authorization: str | None) -> tuple[str, str] | None:
    """The client id and secret of an HTTP Basic Authorization header, if it is one."""
    scheme, _, encoded = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, client_secret = decoded.partition(":")
    return (unquote(client_id), unquote(client_secret)) if sep else None
