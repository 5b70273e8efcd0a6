"""The SSH side of an SFTP drop (asyncssh): list, download, archive, with the host key verified.

Every error names the server and what to fix; nothing is sent to a server whose key is not
the configured one.
"""

from __future__ import annotations

import posixpath
import stat
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import asyncssh
from pydantic import SecretStr

from tasks.sources.feed import Fingerprint, WarehouseUnavailable, WarehouseUnreadable

if TYPE_CHECKING:  # sftp.py imports this module only when a warehouse is read
    from tasks.sources.sftp import SftpFeed, SftpWarehouse


async def probe(warehouse: SftpWarehouse, secrets: Mapping[str, SecretStr]) -> Fingerprint:
    async with _session(warehouse, secrets) as sftp:
        newest = await _newest(warehouse, sftp)
    url = warehouse.url_of(str(newest.filename))
    return Fingerprint(url, f"{newest.attrs.size}:{newest.attrs.mtime}")


async def download(
    warehouse: SftpWarehouse, secrets: Mapping[str, SecretStr]
) -> tuple[str, bytes, int]:
    async with _session(warehouse, secrets) as sftp:
        newest = await _newest(warehouse, sftp)
        path, attrs = str(newest.filename), newest.attrs
        try:
            async with sftp.open(path, "rb") as remote:
                data = cast(bytes, await remote.read())  # "rb": always bytes
            after = await sftp.stat(path)
        except asyncssh.SFTPError as exc:
            raise WarehouseUnreadable(
                warehouse.name, f"{warehouse.url_of(path)}: cannot read: {exc.reason}"
            ) from None
    if (after.size, after.mtime) != (attrs.size, attrs.mtime) or len(data) != after.size:
        raise WarehouseUnavailable(
            warehouse.name,
            f"{warehouse.url_of(path)} changed while it was read (still being uploaded?)",
        )
    return path, data, int(after.mtime or 0)


async def _newest(warehouse: SftpWarehouse, sftp: asyncssh.SFTPClient) -> asyncssh.SFTPName:
    try:
        names = await sftp.glob_sftpname(warehouse.path)
    except asyncssh.SFTPNoSuchFile:
        names = []
    except asyncssh.SFTPError as exc:
        raise WarehouseUnreadable(
            warehouse.name, f"{warehouse.url_of(warehouse.path)}: cannot list: {exc.reason}"
        ) from None
    files = [n for n in names if n.attrs.permissions is None or stat.S_ISREG(n.attrs.permissions)]
    if not files:
        raise WarehouseUnreadable(
            warehouse.name, f"no remote file matches {warehouse.url_of(warehouse.path)}"
        )
    return max(files, key=lambda n: (n.attrs.mtime or 0, str(n.filename)))


async def archive(
    warehouse: SftpWarehouse, secrets: Mapping[str, SecretStr], feed: SftpFeed
) -> str:
    folder = str(warehouse.archive_dir)
    url = warehouse.url_of(feed.remote_path)
    async with _session(warehouse, secrets) as sftp:
        try:
            now = await sftp.stat(feed.remote_path)
            if (now.size, now.mtime) != (feed.remote_size, feed.remote_mtime):
                raise WarehouseUnreadable(
                    warehouse.name, f"{url} changed after it was read; left in place"
                )
            await sftp.makedirs(folder, exist_ok=True)
            name = posixpath.basename(feed.remote_path)
            target = posixpath.join(folder, name)
            if await sftp.exists(target):
                stem, dot, suffix = name.rpartition(".")
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
                name = f"{stem}-{stamp}.{suffix}" if dot else f"{name}-{stamp}"
                target = posixpath.join(folder, name)
            await sftp.rename(feed.remote_path, target)
        except asyncssh.SFTPError as exc:
            raise WarehouseUnreadable(
                warehouse.name, f"{url}: cannot move to {folder}: {exc.reason}"
            ) from None
    return target


class _HostKeyWitness(asyncssh.SSHClient):
    """Remembers the host key a server presented when known_hosts did not trust it."""

    untrusted: asyncssh.SSHKey | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.untrusted = key
        return False


@asynccontextmanager
async def _session(
    warehouse: SftpWarehouse, secrets: Mapping[str, SecretStr]
) -> AsyncIterator[asyncssh.SFTPClient]:
    """An SFTP session, after verifying the host key and logging in; errors name what to fix."""
    server = f"sftp://{warehouse.host}:{warehouse.port}"
    witness = _HostKeyWitness()
    options: dict[str, Any] = {
        "username": warehouse.user,
        "known_hosts": _trusted_keys(warehouse),
        "client_factory": lambda: witness,
        "password": secrets["password"].get_secret_value() if "password" in secrets else None,
        "client_keys": [_private_key(warehouse, secrets)] if "private_key" in secrets else None,
        "agent_path": None,  # only the configured credentials, never the runner's own keys
        "config": None,
        "connect_timeout": warehouse.timeout_seconds,
        "login_timeout": warehouse.timeout_seconds,
    }
    try:
        async with (
            asyncssh.connect(warehouse.host, warehouse.port, **options) as conn,
            conn.start_sftp_client() as sftp,
        ):
            yield sftp
    except asyncssh.HostKeyNotVerifiable as exc:
        raise WarehouseUnreadable(
            warehouse.name, _untrusted(warehouse, server, witness, exc)
        ) from None
    except asyncssh.PermissionDenied:
        what = " and ".join(k for k in ("password", "private_key") if k in secrets)
        raise WarehouseUnreadable(
            warehouse.name, f"{server}: login as {warehouse.user!r} refused; check the {what}"
        ) from None
    except asyncssh.KeyExchangeFailed as exc:
        raise WarehouseUnreadable(
            warehouse.name, f"{server}: no common algorithm with the server: {exc.reason}"
        ) from None
    except (OSError, asyncssh.DisconnectError, asyncssh.SFTPConnectionLost) as exc:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        raise WarehouseUnavailable(warehouse.name, f"{server}: cannot connect: {reason}") from None


def _trusted_keys(warehouse: SftpWarehouse) -> Any:
    if warehouse.host_key is not None:
        return ([asyncssh.import_public_key(warehouse.host_key)], [], [])
    try:
        return asyncssh.read_known_hosts(str(warehouse.known_hosts))
    except (OSError, ValueError) as exc:
        raise WarehouseUnreadable(
            warehouse.name, f"known_hosts {warehouse.known_hosts}: cannot read: {exc}"
        ) from None


def _private_key(warehouse: SftpWarehouse, secrets: Mapping[str, SecretStr]) -> asyncssh.SSHKey:
    passphrase = secrets.get("passphrase")
    try:
        return asyncssh.import_private_key(
            secrets["private_key"].get_secret_value(),
            passphrase.get_secret_value() if passphrase else None,
        )
    except (asyncssh.KeyImportError, ValueError) as exc:
        hint = "check private_key and passphrase"
        if "bcrypt" in str(exc):
            hint = "an encrypted OpenSSH-format key needs bcrypt: use an encrypted PKCS#8 PEM key"
        raise WarehouseUnreadable(
            warehouse.name, f"private_key cannot be read ({exc}); {hint}"
        ) from None


def _untrusted(
    warehouse: SftpWarehouse, server: str, witness: _HostKeyWitness, exc: asyncssh.Error
) -> str:
    trusted_by = (
        "host_key" if warehouse.host_key else f"known_hosts {warehouse.known_hosts} (for this host)"
    )
    if witness.untrusted is None:
        return f"{server}: host key not verified: {exc.reason}"
    seen = f"{witness.untrusted.get_algorithm()} key {witness.untrusted.get_fingerprint()}"
    return (
        f"{server}: host key not trusted: the server presented {seen}, which is not the key in "
        f"{trusted_by}. Nothing was sent to it. If the provider really changed its key, "
        "confirm this fingerprint with them, then update the configuration."
    )
