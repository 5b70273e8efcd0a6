"""An API account's newest refresh token in the state database: encrypted, and locked while used.

The token is a Fernet token (AES-128-CBC with HMAC-SHA256, from `cryptography`) of the refresh
token, keyed by a secret the configuration names. The lock that serialises refreshes is per
account and works across processes and machines: an flock beside a SQLite database (released
when the process dies, kill -9 included), a session advisory lock on PostgreSQL (released when
the session ends, so a vanished machine frees it once TCP keepalives notice).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr
from sqlalchemy import Connection, select, text, update

from tasks.state.engines import engine_for, sqlite_write_lock
from tasks.state.location import POSTGRESQL, StateLocation
from tasks.state.lock import KEEPALIVE
from tasks.state.schema import refresh_tokens, upsert_rows

LOCK_POLL_SECONDS = 0.02


class KeyMismatch(Exception):
    """The stored refresh token does not decrypt with this key."""


class LockTimeout(Exception):
    """Another process held the account's refresh lock for longer than we wait."""


@dataclass(frozen=True)
class StoredToken:
    generation: int
    token: SecretStr
    stored_at: str
    stored_by: str
    refreshing: str | None  # who began a refresh of this generation and did not finish it
    rejected: str | None  # what the token endpoint said when it refused this generation


def new_key() -> str:
    """A fresh encryption key, for lightspeed.auth.encryption_key."""
    return Fernet.generate_key().decode("ascii")


def fernet_for(key: SecretStr) -> Fernet:
    """The cipher of a key; ValueError (never showing the key) if it is not a Fernet key."""
    try:
        return Fernet(key.get_secret_value().strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ValueError(
            "not a Fernet key (32 bytes, url-safe base64: 44 characters ending in '=')"
        ) from None


def whoami(what: str) -> str:
    return f"{what} (pid {os.getpid()} on {socket.gethostname()}, at {_now()})"


class RefreshTokens:
    """One account's stored refresh token in one state database."""

    def __init__(self, location: StateLocation, account: str, key: SecretStr) -> None:
        self.location = location
        self.account = account
        self._fernet = fernet_for(key)
        self._engine = engine_for(location)

    def read(self) -> StoredToken | None:
        """The newest refresh token stored for the account, or None."""
        with self._engine.connect() as db:
            row = db.execute(
                select(refresh_tokens).where(refresh_tokens.c.account == self.account)
            ).one_or_none()
        if row is None:
            return None
        try:
            token = self._fernet.decrypt(row.token).decode("utf-8")
        except InvalidToken:
            raise KeyMismatch(
                f"the refresh token stored for account {self.account!r} does not decrypt with "
                "lightspeed.auth.encryption_key (was the key changed?)"
            ) from None
        return StoredToken(
            row.generation,
            SecretStr(token),
            row.stored_at,
            row.stored_by,
            row.refreshing,
            row.rejected,
        )

    def store(self, token: SecretStr, by: str) -> int:
        """Store a new newest refresh token; returns its generation."""
        with self._writing() as db:
            current = db.execute(
                select(refresh_tokens.c.generation).where(refresh_tokens.c.account == self.account)
            ).scalar()
            generation = (current or 0) + 1
            row = {
                "account": self.account,
                "generation": generation,
                "token": self._fernet.encrypt(token.get_secret_value().encode("utf-8")),
                "stored_at": _now(),
                "stored_by": by,
                "refreshing": None,
                "rejected": None,
            }
            upsert_rows(db, refresh_tokens, [row])
        return generation

    def mark_refreshing(self, generation: int, who: str | None) -> None:
        """Note (durably, before the request) that a refresh of this generation is under way.

        None: it ended with the token unchanged (the endpoint answered, and not with a new one).
        """
        self._mark(generation, refreshing=who)

    def mark_rejected(self, generation: int, why: str) -> None:
        """Note that the token endpoint refused this generation: no process presents it again."""
        self._mark(generation, rejected=why)

    def _mark(self, generation: int, **values: str | None) -> None:
        with self._writing() as db:
            db.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.account == self.account)
                .where(refresh_tokens.c.generation == generation)
                .values(**values)
            )

    @contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """Hold the account's refresh lock, across processes and machines; LockTimeout if busy."""
        hold = _advisory if self.location.dialect == POSTGRESQL else _flock
        with hold(self.location, self.account, timeout):
            yield

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        lock = sqlite_write_lock(self.location) if self.location.dialect != POSTGRESQL else None
        if lock is not None:
            lock.acquire()
        try:
            with self._engine.begin() as db:
                yield db
        finally:
            if lock is not None:
                lock.release()


@contextmanager
def _flock(location: StateLocation, account: str, timeout: float) -> Iterator[None]:
    path = location.sqlite_path.parent / f"auth-{account}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "a") as handle:  # closing it releases the lock
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{path} held for more than {timeout:.0f}s") from None
                time.sleep(LOCK_POLL_SECONDS)
        yield


@contextmanager
def _advisory(location: StateLocation, account: str, timeout: float) -> Iterator[None]:
    digest = hashlib.sha256(f"inventory-sync refresh token {account}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    with engine_for(location).connect().execution_options(isolation_level="AUTOCOMMIT") as session:
        for name, value in KEEPALIVE.items():
            session.exec_driver_sql(f"SET {name} = {int(value)}")
        session.exec_driver_sql(f"SET lock_timeout = {int(timeout * 1000)}")
        try:
            session.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        except Exception as exc:
            if "lock timeout" in str(exc).lower():
                raise LockTimeout(
                    f"the refresh lock of account {account!r} held for more than {timeout:.0f}s"
                ) from None
            raise
        session.exec_driver_sql("RESET lock_timeout")  # the connection goes back to the pool
        try:
            yield
        finally:
            try:
                session.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            except Exception:  # the session is gone, and its lock with it
                session.invalidate()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
