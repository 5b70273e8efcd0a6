"""A real SFTP server on loopback for the tests: asyncssh, its own host key, two users."""

from __future__ import annotations

import asyncio
import hmac
import threading
from pathlib import Path
from types import TracebackType

import asyncssh

PASSWORD_USER, PASSWORD = "alice", "alice-sftp-password"
KEY_USER = "bob"


class _Server(asyncssh.SSHServer):
    def __init__(self, owner: SftpServer) -> None:
        self.owner = owner

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.owner.connections.add(conn)

    def begin_auth(self, username: str) -> bool:
        self.owner.logins.append(username)
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        self.owner.passwords_seen.append(password)
        return username == PASSWORD_USER and hmac.compare_digest(password, PASSWORD)

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == KEY_USER and key.public_data == self.owner.client_key.public_data


class SftpServer:
    """asyncssh's SSH server with SFTP only, chrooted to `root`, in a thread with its own loop.

    `alice` logs in with a password, `bob` with `client_key`; what clients tried is recorded.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.port = 0
        self.logins: list[str] = []
        self.passwords_seen: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncssh.SSHAcceptor | None = None
        self.connections: set[asyncssh.SSHServerConnection] = set()  # every one accepted

    def __enter__(self) -> SftpServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(30)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._close(self._server), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    async def _close(self, server: asyncssh.SSHAcceptor) -> None:
        """Stop listening, then close the connections still open on the server's side.

        A client's goodbye can still be on its way when a test ends, and Python 3.11's
        wait_closed does not wait for connections: one left open when the loop closes is an
        unclosed transport. (A clean-clone CI run reported an error in this fixture's
        teardown; its text was lost with the run, stopped for another reason.)
        """
        server.close()
        await server.wait_closed()
        for connection in self.connections:
            connection.close()
        for connection in self.connections:
            await connection.wait_closed()

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            lambda: _Server(self),
            "127.0.0.1",
            0,
            server_host_keys=[self.host_key],
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(self.root)),
            allow_scp=False,
        )

    @property
    def host_key_line(self) -> str:
        """The server's public key as ssh-keyscan prints it: "ssh-ed25519 AAAA..."."""
        return self.host_key.export_public_key().decode().strip()

    def known_hosts(self, path: Path) -> Path:
        """Write a known_hosts file that lists this server; return its path."""
        path.write_text(f"[127.0.0.1]:{self.port} {self.host_key_line}\n", encoding="utf-8")
        return path

    def client_key_text(self, passphrase: str | None = None) -> str:
        """bob's private key: OpenSSH format, or encrypted PKCS#8 PEM when a passphrase is given.

        (Encrypted OpenSSH-format keys need bcrypt, which this project does not install.)
        """
        if passphrase is None:
            return self.client_key.export_private_key("openssh").decode()
        return self.client_key.export_private_key("pkcs8-pem", passphrase=passphrase).decode()
