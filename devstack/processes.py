"""Child processes of the dev tooling, benchmarks and tests: started with a log, stopped as a tree.

psutil names a process by its pid and start time, so a pid the kernel has reused is never taken
for ours. Stopping a process also stops what it started in sessions of its own (a worker's flow
runs), which a signal to its process group would miss.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx
import psutil

HOST = "127.0.0.1"


class NotReady(RuntimeError):
    """A child exited before it was ready, or was not ready in time; the message says which."""


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether a server could not bind host:port (as uvicorn binds it, with SO_REUSEADDR)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_listener(port: int, timeout: float, host: str = HOST) -> bool:
    """Whether something accepts connections on host:port within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers a GET with a 2xx (a server that is up and ready)."""
    try:
        return httpx.get(url, timeout=timeout).is_success
    except httpx.HTTPError:
        return False


def is_running(process: psutil.Process) -> bool:
    """Whether this very process (not a later one with its pid) is alive and not a zombie."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def descendants(pid: int) -> set[psutil.Process]:
    """Every living process below `pid` in the process tree."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return set()
    return {child for child in children if is_running(child)}


def _signal(process: psutil.Process, signum: int) -> None:
    """Signal a process, and its whole group when it leads one."""
    if not is_running(process):
        return
    with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)


def stop_processes(processes: Iterable[psutil.Process], grace: float = 5.0) -> None:
    """SIGTERM each living process, wait up to `grace` seconds, then SIGKILL what is left."""
    alive = [p for p in processes if is_running(p)]
    for process in alive:
        _signal(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(is_running(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in alive:
        _signal(process, signal.SIGKILL)


class ManagedProcess:
    """A child in its own session, output to a log file; stopping it stops all it started."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log = log
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._starts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> ManagedProcess:
        """Start the command in a new session, so a Ctrl-C meant for us does not reach it."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("ab" if self._starts else "wb")  # a restart keeps the log
        self._starts += 1
        self._process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def exit_code(self) -> int | None:
        """None while it runs, else its exit status."""
        return None if self._process is None else self._process.poll()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its log, to show why it stopped."""
        try:
            text = self.log.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll `ready` until it holds; raise NotReady if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                raise NotReady(
                    f"the {self.name} exited with status {code}; the end of "
                    f"{self.log}:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.25)
        raise NotReady(f"the {self.name} did not answer within {timeout:.0f} s")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM its group, wait, then SIGKILL whatever it started that is still alive."""
        process = self._process
        if process is None:
            return
        family = descendants(process.pid)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # children in sessions of their own (the worker's flow runs) outlive a group kill
        for member in list(family):
            with contextlib.suppress(psutil.Error):
                family.update(c for c in member.children(recursive=True) if is_running(c))
        stop_processes(family, grace=5)
        if self._log_file is not None:
            self._log_file.close()
        self._process = None
