"""OAuth access to the Lightspeed API: one token provider per process and account.

Access tokens live in memory only and are refreshed ahead of expiry (and once on a 401). A
refresh runs under the account's lock across processes and machines, with the refresh token
read from the state store (the newest, whoever stored it), and the one it is exchanged for
stored there before the new access token is used: Lightspeed revokes a refresh token when it
issues the next, so none may ever be presented twice. docs/authentication.md says how to run it.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from tasks.config.errors import ConfigError
from tasks.config.secrets import read_secret, resolve_token
from tasks.config.settings import LightspeedSettings, OAuthAuth, account_name
from tasks.http.verdicts import USER_AGENT, json_or_none, retry_after_seconds
from tasks.lightspeed.client import RetryableError, StaticToken, Unauthorized, tls_context
from tasks.state.location import StateLocation
from tasks.state.tokens import KeyMismatch, LockTimeout, RefreshTokens, fernet_for, whoami

EVENT_AUTH_FAILED = "inventory-sync.auth.failed"
DEFAULT_EXPIRES_IN = 15 * 60.0  # Lightspeed's documented access-token lifetime
LOCK_TIMEOUT_SECONDS = 120.0  # longer than a refresh's few attempts can take
TOKEN_ATTEMPTS = 4  # a 5xx, a 429 or a connection that never reached the server
TOKEN_BACKOFF_SECONDS = 0.5


class AuthFailed(Unauthorized):
    """The platform will not give us an access token until a person acts; the message says how."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=401)


class AuthUnavailable(RetryableError):
    """The token endpoint could not be reached or kept failing; a later attempt may work."""


@dataclass(frozen=True)
class OAuthCredentials:
    """What a process needs to get access tokens for an account: settings and resolved secrets."""

    auth: OAuthAuth
    account: str
    client_secret: SecretStr
    encryption_key: SecretStr
    state: StateLocation
    config_path: str
    timeout_seconds: float

    @property
    def fix(self) -> str:
        return f"inventory-sync auth --config {self.config_path}"

    def tokens(self) -> TokenProvider:
        """This process's provider for the account, shared by every client and thread."""
        key = (self.state.url, self.account, self.auth, self.client_secret, self.encryption_key)
        with _providers_lock:
            provider = _providers.get(key)
            if provider is None:
                provider = _providers[key] = TokenProvider(self)
            return provider


Credentials = StaticToken | OAuthCredentials


def resolve_credentials(
    settings: LightspeedSettings, state: StateLocation, config_path: str | Path
) -> Credentials:
    """How this configuration authenticates, its secrets read once; ConfigError names what is missing."""
    if settings.auth.kind == "static":
        return StaticToken(resolve_token(settings))
    auth = settings.auth
    secrets: dict[str, SecretStr] = {}
    problems = []
    for name, ref in (
        ("client_secret", auth.client_secret),
        ("encryption_key", auth.encryption_key),
    ):
        try:
            secrets[name] = read_secret(ref)
        except ValueError as exc:
            problems.append(f"lightspeed.auth.{name}: {exc}")
    if not problems:
        try:
            fernet_for(secrets["encryption_key"])
        except ValueError as exc:
            problems.append(f"lightspeed.auth.encryption_key: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))
    return OAuthCredentials(
        auth,
        account_name(settings),
        secrets["client_secret"],
        secrets["encryption_key"],
        state,
        str(config_path),
        settings.timeout_seconds,
    )


@dataclass(frozen=True)
class TokenCounts:
    refreshes: int = 0  # access tokens obtained
    after_401: int = 0  # of those, because a request was answered 401

    def __sub__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(self.refreshes - other.refreshes, self.after_401 - other.after_401)

    def describe(self) -> str:
        after = f" ({self.after_401} after a 401)" if self.after_401 else ""
        return f"{self.refreshes} access token(s) refreshed{after}"


@dataclass(frozen=True)
class SignedIn:
    """A run's access to the API: the provider's counts when it began, for the summary."""

    credentials: Credentials
    counts_at_start: TokenCounts

    def used(self) -> TokenCounts | None:
        """Refreshes since the run began (None for a static token)."""
        if isinstance(self.credentials, StaticToken):
            return None
        return self.credentials.tokens().counts() - self.counts_at_start


def sign_in(credentials: Credentials) -> SignedIn:
    """Make sure an access token can be had now, before the run sends anything (AuthFailed if not)."""
    if isinstance(credentials, StaticToken):
        return SignedIn(credentials, TokenCounts())
    provider = credentials.tokens()
    provider.run = current_run() or provider.run  # the load's request threads have no context
    counts = provider.counts()
    try:
        provider.bearer()
    except AuthFailed as exc:
        raise AuthFailed(f"{exc} (nothing was sent)") from None
    return SignedIn(credentials, counts)


@dataclass(frozen=True)
class Issued:
    access_token: SecretStr
    expires_in: float
    refresh_token: SecretStr | None


def issued_from(body: Any) -> Issued:
    """The tokens of a token endpoint's 200 answer; `expires_in` absent: the documented 15 min."""
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise AuthUnavailable("token refresh: the answer has no access_token")
    expires_in = body.get("expires_in")
    if isinstance(expires_in, str) and expires_in.strip().isdigit():
        expires_in = int(expires_in)
    lifetime = (
        float(expires_in)
        if isinstance(expires_in, int | float)
        and not isinstance(expires_in, bool)
        and expires_in > 0
        else DEFAULT_EXPIRES_IN
    )
    refresh = body.get("refresh_token")
    return Issued(
        SecretStr(body["access_token"]),
        lifetime,
        SecretStr(refresh) if isinstance(refresh, str) and refresh else None,
    )


class TokenProvider:
    """Access tokens for one account in this process: refreshed once for all threads, under lock."""

    def __init__(self, credentials: OAuthCredentials) -> None:
        self.credentials = credentials
        self.identity = f"oauth:{credentials.account}"  # the account's pacer, not a token
        self._lock = threading.Lock()
        self._access: SecretStr | None = None
        self._expires_at = 0.0  # monotonic
        self._margin = 0.0
        self._refreshes = self._after_401 = 0
        self._reported: set[int] = set()  # refused generations already announced by an event
        self._store: RefreshTokens | None = None
        self.run: tuple[str, str] | None = None  # the flow run that signed in last: (id, name)
        self._http = httpx.Client(
            timeout=credentials.timeout_seconds,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            verify=tls_context(),
        )

    def bearer(self) -> str:
        """A live access token: the one held, or a new one if it is within the margin of expiry."""
        with self._lock:
            if not self._fresh():
                self._refresh()
            assert self._access is not None
            return self._access.get_secret_value()

    def renewed(self, rejected: str) -> str:
        """An access token to try once more after `rejected` got a 401 (a newer one if held)."""
        with self._lock:
            held = self._access.get_secret_value() if self._access else None
            if held is None or held == rejected or not self._fresh():
                self._refresh()
                self._after_401 += 1
            assert self._access is not None
            return self._access.get_secret_value()

    def expires_in(self) -> float:
        """Seconds the held access token has left (0 without one)."""
        with self._lock:
            return max(0.0, self._expires_at - time.monotonic()) if self._access else 0.0

    def counts(self) -> TokenCounts:
        with self._lock:
            return TokenCounts(self._refreshes, self._after_401)

    def close(self) -> None:
        self._http.close()

    def _fresh(self) -> bool:
        return self._access is not None and time.monotonic() < self._expires_at - self._margin

    def _refresh(self) -> None:
        """Exchange the stored refresh token for new tokens; store the new one before use."""
        try:
            store = self._store or RefreshTokens(
                self.credentials.state, self.credentials.account, self.credentials.encryption_key
            )
            self._store = store
            with store.locked(LOCK_TIMEOUT_SECONDS):
                self._refresh_locked(store)
        except KeyMismatch as exc:
            fix = self.credentials.fix
            raise self._failed(f"{exc}. Store the refresh token again: {fix}") from None
        except LockTimeout as exc:
            raise AuthUnavailable(
                f"token refresh: another process holds the lock ({exc})"
            ) from None

    def _refresh_locked(self, store: RefreshTokens) -> None:
        c = self.credentials
        stored = store.read()  # the newest, whichever process stored it
        if stored is None:
            raise self._failed(
                f"no refresh token is stored for account {c.account!r} in {c.state.url}. "
                f"Store the one from Lightspeed's API setup: {c.fix}"
            )
        if stored.rejected is not None:
            raise self._failed(
                f"the stored refresh token for account {c.account!r} was refused ({stored.rejected}); "
                f"store a new one: {c.fix}",
                stored.generation,
            )
        store.mark_refreshing(stored.generation, whoami("a refresh"))
        started = time.monotonic()
        issued = self._exchange(stored.token, stored.generation, stored.refreshing, store)
        store.store(issued.refresh_token or stored.token, whoami("a refresh"))
        self._access = issued.access_token
        self._expires_at = started + issued.expires_in
        self._margin = min(c.auth.refresh_margin_seconds, issued.expires_in / 4)
        self._refreshes += 1

    def _exchange(
        self, token: SecretStr, generation: int, interrupted: str | None, store: RefreshTokens
    ) -> Issued:
        """POST the refresh token; retried only where it cannot have been presented twice knowingly."""
        c = self.credentials
        form = {"grant_type": "refresh_token", "refresh_token": token.get_secret_value()}
        extra: dict[str, Any] = {}
        if c.auth.client_auth == "basic":
            extra["auth"] = httpx.BasicAuth(c.auth.client_id, c.client_secret.get_secret_value())
        else:
            form |= {
                "client_id": c.auth.client_id,
                "client_secret": c.client_secret.get_secret_value(),
            }
        lost: str | None = None
        problem = ""
        for attempt in range(1, TOKEN_ATTEMPTS + 1):
            try:
                response = self._http.post(c.auth.token_url, data=form, **extra)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached the server
                problem = f"cannot connect ({type(exc).__name__})"
                self._pause(attempt, None)
                continue
            except httpx.TransportError as exc:
                if lost is not None:
                    break
                # sent, answer lost: the server may have rotated the token. Presenting it once
                # more is the only way to know; a refusal then says it was rotated.
                lost = f"the answer to a refresh was lost ({type(exc).__name__})"
                problem = lost
                continue
            status = response.status_code
            body = json_or_none(response)
            if status == 200:
                return issued_from(body)
            if status == 429 or status >= 500:
                problem = f"HTTP {status}"
                self._pause(attempt, retry_after_seconds(response))
                continue
            error = body.get("error") if isinstance(body, dict) else None
            said = f"HTTP {status} {error or response.reason_phrase}"
            if error == "invalid_grant":  # this refresh token is dead for every process
                store.mark_rejected(generation, said)
            elif lost is None:  # refused for another reason: the token was not rotated
                store.mark_refreshing(generation, None)
            raise self._failed(self._refusal(said, status, lost, interrupted), generation)
        if lost is None:  # every attempt was answered or never arrived: nothing was rotated
            store.mark_refreshing(generation, None)
        raise AuthUnavailable(
            f"token refresh at {c.auth.token_url} failed {TOKEN_ATTEMPTS} time(s): {problem}; "
            "the stored refresh token is unchanged"
            + ("" if lost is None else f" unless {lost} had rotated it")
        )

    def _refusal(self, said: str, status: int, lost: str | None, interrupted: str | None) -> str:
        c = self.credentials
        if status == 401:
            return (
                f"the token endpoint refused the client ({said}): check lightspeed.auth.client_id, "
                f"client_secret and client_auth; then check with {c.fix} --check"
            )
        why = "it was revoked or has expired"
        if lost is not None:
            why = (
                f"{lost}, and the endpoint had issued a new token then, which revoked this one; "
                "the new one never arrived"
            )
        elif interrupted is not None:
            why = (
                f"{interrupted} never finished (its process was killed or lost the answer) after "
                "the endpoint had issued a new token, which revoked this one"
            )
        return (
            f"Lightspeed refused the stored refresh token for account {c.account!r} ({said}): "
            f"{why}. Get a new refresh token (Lightspeed's API setup) and "
            f"store it: {c.fix}"
        )

    def _failed(self, message: str, generation: int | None = None) -> AuthFailed:
        error = AuthFailed(message)
        if generation is None or generation not in self._reported:
            if generation is not None:
                self._reported.add(generation)
            run = current_run()
            if run is None or (self.run is not None and run[0] == self.run[0]):
                run = self.run
            report_auth_failure(self.credentials.account, message, run)
        return error

    @staticmethod
    def _pause(attempt: int, retry_after: float | None) -> None:
        if attempt < TOKEN_ATTEMPTS:
            backoff = TOKEN_BACKOFF_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
            time.sleep(min(retry_after if retry_after is not None else backoff, 30.0))


_providers: dict[tuple[Any, ...], TokenProvider] = {}
_providers_lock = threading.Lock()


def close_providers() -> None:
    """Forget every provider of this process and its access token (tests; a forked worker)."""
    with _providers_lock:
        providers = list(_providers.values())
        _providers.clear()
    for provider in providers:
        provider.close()


def current_run() -> tuple[str, str] | None:
    """The flow run this thread works for, (id, name), if Prefect's context says so."""
    from prefect.context import FlowRunContext, TaskRunContext

    flow_context, task_context = FlowRunContext.get(), TaskRunContext.get()
    if flow_context is not None and flow_context.flow_run is not None:
        return str(flow_context.flow_run.id), flow_context.flow_run.name
    if task_context is not None and task_context.task_run.flow_run_id is not None:
        run_id = str(task_context.task_run.flow_run_id)
        return run_id, run_id  # the flow run's name is not in a task's context
    return None


def report_auth_failure(account: str, message: str, run: tuple[str, str] | None) -> None:
    """The `inventory-sync.auth.failed` event, from within a run (outside one, the exit status says it)."""
    if run is None:
        return
    from prefect.events import emit_event

    run_id, run_name = run

    emit_event(
        event=EVENT_AUTH_FAILED,
        resource={
            "prefect.resource.id": f"inventory-sync.auth.{account}",
            "prefect.resource.name": account,
        },
        related=[
            {
                "prefect.resource.id": f"prefect.flow-run.{run_id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": run_name,
            }
        ],
        payload={"account": account, "error": message[:2000]},
    )
