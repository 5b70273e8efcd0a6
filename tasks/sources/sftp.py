"""SFTP drops: the newest remote file matching a glob, host key verified, parsed as CSV.

The settings and the feed live here; the SSH conversation (asyncssh) is in sftp_session.py,
imported only when an SFTP warehouse is read, so a run without one does not pay for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from tasks.config.fields import relative_to_config
from tasks.config.secrets import SecretRef
from tasks.sources.csv import csv_feed
from tasks.sources.feed import (
    Feed,
    Fingerprint,
    SourceKind,
)
from tasks.sources.warehouse import CsvOptions, RemoteWarehouse


class SftpWarehouse(RemoteWarehouse, CsvOptions):
    kind: Literal["sftp"]
    host: str = Field(min_length=1, description="the SFTP server")
    port: int = Field(22, ge=1, le=65535, description="the SFTP server's port")
    user: str = Field(min_length=1, description="the login")
    password: SecretRef | None = Field(None, description="the login's password")
    private_key: SecretRef | None = Field(None, description="the key itself (OpenSSH/PEM text)")
    passphrase: SecretRef | None = Field(None, description="for an encrypted private_key")
    known_hosts: str | None = Field(None, description="known_hosts file listing the server's key")
    host_key: str | None = Field(None, description='the server\'s key: "ssh-ed25519 AAAA..."')
    path: str = Field(min_length=1, description="remote file or glob; the newest match is read")
    archive_dir: str | None = Field(
        None, min_length=1, description="remote folder the file moves to after a successful run"
    )

    _resolve = field_validator("known_hosts")(relative_to_config)

    @field_validator("host_key")
    @classmethod
    def _public_key(cls, value: str | None) -> str | None:
        import asyncssh

        if value is None:
            return None
        try:
            asyncssh.import_public_key(value)
        except (asyncssh.KeyImportError, ValueError):
            raise ValueError(
                'not an SSH public key; write it as ssh-keyscan prints it, "ssh-ed25519 AAAA..."'
            ) from None
        return value.strip()

    def url_of(self, path: str) -> str:
        """Where a remote file is, for messages and reports (never with a password)."""
        where = path if path.startswith("/") else f"/~/{path}"
        return f"sftp://{self.user}@{self.host}:{self.port}{where}"

    @model_validator(mode="after")
    def _verified_login(self) -> SftpWarehouse:
        if (self.known_hosts is None) == (self.host_key is None):
            raise ValueError(
                "give exactly one of known_hosts (a file) or host_key (the server's public key); "
                "the server's host key is always verified"
            )
        if self.password is None and self.private_key is None:
            raise ValueError("give password or private_key (or both)")
        if self.passphrase is not None and self.private_key is None:
            raise ValueError("passphrase is for an encrypted private_key; private_key is missing")
        return self


@dataclass(frozen=True)
class SftpFeed(Feed):
    """A feed from an SFTP drop, naming the remote file it came from, so exactly that is archived."""

    remote_path: str
    remote_size: int
    remote_mtime: int


def read_sftp_feed(warehouse: SftpWarehouse, secrets: Mapping[str, SecretStr]) -> SftpFeed:
    """Download the newest remote file matching the glob and parse it as CSV."""
    from tasks.sources import sftp_session

    path, data, mtime = asyncio.run(sftp_session.download(warehouse, secrets))
    modified = datetime.fromtimestamp(mtime, tz=UTC)
    feed = csv_feed(warehouse, warehouse.url_of(path), data, modified)
    return SftpFeed(**vars(feed), remote_path=path, remote_size=len(data), remote_mtime=mtime)


def archive_sftp_file(
    warehouse: SftpWarehouse, secrets: Mapping[str, SecretStr], feed: SftpFeed
) -> str:
    """Move the file a feed was read from into archive_dir, unless it changed since; return where."""
    from tasks.sources import sftp_session

    return asyncio.run(sftp_session.archive(warehouse, secrets, feed))


def probe_sftp(warehouse: SftpWarehouse, secrets: Mapping[str, SecretStr]) -> Fingerprint:
    """The newest remote file's name, size and modification time, from a listing: no download."""
    from tasks.sources import sftp_session

    return asyncio.run(sftp_session.probe(warehouse, secrets))


def archive_after_success(
    warehouse: SftpWarehouse, secrets: Mapping[str, SecretStr], feed: Feed
) -> str | None:
    """After a run in which every update landed: move the file read into archive_dir, if set."""
    if not warehouse.archive_dir or not isinstance(feed, SftpFeed):
        return None
    return archive_sftp_file(warehouse, secrets, feed)


KIND = SourceKind("sftp", SftpWarehouse, read_sftp_feed, archive_after_success, probe=probe_sftp)
