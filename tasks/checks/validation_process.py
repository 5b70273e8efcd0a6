"""Great Expectations in a side process, imported on the other core while the run starts.

Importing GX costs seconds of CPU with the interpreter lock held (its own modules, scipy,
altair). In a thread it only takes turns with Prefect's import and the flow's polars work, so
every scheduled cycle and every feed arrival's run would wait for it. A child process imports
it on the second core instead, while this one imports Prefect and reads
the feeds; `validate` then sends it the few hundred distinct combinations a suite must judge
(tasks/checks/gx.py) and gets the outcomes back.

The child is a convenience, never a dependency: if it cannot start, dies or answers nonsense,
the suite runs in this process instead (the same function, so the same verdicts) and a warning
says so. It exits when this process closes its stdin, at exit, or when this process dies (its
stdin then reads end-of-file). It writes nothing but GX's own warnings, to this process's
stderr. Frames and outcomes travel as length-prefixed pickles over its stdin and stdout.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from contextlib import suppress
from typing import Any

import polars as pl

HEADER = struct.Struct("!Q")
ANSWER_TIMEOUT_SECONDS = 600.0  # a bound for a hung child: a suite judges only a few hundred rows
STOP_TIMEOUT_SECONDS = 2.0
DISABLE_ENV = "INVENTORY_SYNC_VALIDATE_IN_PROCESS"  # "1": no side process (debugging)
# GX imports these at its own import for expectations no suite here uses (KL divergence,
# charts): in the child they load on first use instead, a large share of its import CPU
LAZY_PACKAGES = ("scipy", "altair")

log = logging.getLogger(__name__)


class ProcessGone(Exception):
    """The side process did not answer: it exited, was killed, or broke the protocol."""


def write_message(stream: Any, message: object) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


def read_message(stream: Any) -> Any:
    """The next message, or EOFError at a clean end of the stream."""
    header = stream.read(HEADER.size)
    if not header:
        raise EOFError
    if len(header) < HEADER.size:
        raise ProcessGone("the stream ended inside a message header")
    (size,) = HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        raise ProcessGone("the stream ended inside a message")
    return pickle.loads(body)  # our own child's answer, over its own pipe


class ValidationProcess:
    """One child running `serve()`; asked one suite at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self.pid = self._child.pid  # kept after it is gone, for messages
        atexit.register(self.stop)

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def validate(
        self, frame: pl.DataFrame, suite_name: str, spec: dict[str, Any] | None = None
    ) -> Any:
        """The suite's outcomes from the child; ProcessGone if it cannot give them.

        `spec` is the suite's JSON as this process read it, so that both judge by the same
        suite; without it the child reads the suite file itself.
        """
        with self._lock:
            child = self._child
            if child is None or child.stdin is None or child.stdout is None:
                raise ProcessGone("it was stopped")
            try:
                write_message(child.stdin, (suite_name, spec, frame))
                _wait_readable(child.stdout, ANSWER_TIMEOUT_SECONDS)
                kind, value = read_message(child.stdout)
            except (OSError, EOFError, ProcessGone, pickle.UnpicklingError, ValueError) as exc:
                self._discard()
                raise ProcessGone(f"{type(exc).__name__}: {exc}") from None
        if kind == "raised":
            raise value  # the suite's own error (a SuiteError), exactly as in this process
        if kind != "outcomes":
            self._discard()
            raise ProcessGone(f"unexpected answer {kind!r}")
        return value

    def stop(self) -> None:
        """Close its stdin so it exits; kill it if it does not within a moment."""
        child, self._child = self._child, None
        if child is None:
            return
        try:
            _close(child.stdin)
            child.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        finally:
            _close(child.stdout)

    def _discard(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.wait()
            _close(child.stdin)
            _close(child.stdout)


def _close(stream: Any) -> None:
    if stream is not None:
        with suppress(OSError):  # a pipe to a dead child: nothing left to flush
            stream.close()


def _wait_readable(stream: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProcessGone(f"no answer in {timeout:.0f} s")
        ready, _, _ = select.select([stream], [], [], remaining)
        if ready:
            return


_process: ValidationProcess | None = None
_process_lock = threading.Lock()


def start() -> ValidationProcess | None:
    """Start the side process once per process, unless GX is already imported here."""
    global _process
    with _process_lock:
        if _process is not None or "great_expectations" in sys.modules:
            return _process
        if os.environ.get(DISABLE_ENV) == "1":
            return None
        try:
            _process = ValidationProcess()
        except OSError as exc:
            log.warning("Great Expectations runs in this process: no side process (%s)", exc)
        return _process


def running() -> ValidationProcess | None:
    """The side process, if one was started and has not failed."""
    return _process


def forget(process: ValidationProcess) -> None:
    """After it failed: validate in this process from now on."""
    global _process
    with _process_lock:
        if _process is process:
            _process = None


class LazyImports:
    """A finder that makes the named packages load on first use (the standard LazyLoader).

    `import scipy.stats` then binds a module object whose code runs when an attribute of it
    is first read. Only the child installs it: if a package misbehaves when loaded late, the
    child fails, and the run validates in its own process, which imports everything at once.
    """

    def __init__(self, packages: tuple[str, ...]) -> None:
        self.packages = packages

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name.partition(".")[0] not in self.packages:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = importlib.util.LazyLoader(spec.loader)
                return spec
        return None


def serve() -> None:
    """The child's loop: import GX, then answer (suite, spec, frame) requests until EOF."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    sys.meta_path.insert(0, LazyImports(LAZY_PACKAGES))
    from tasks.checks import gx

    gx.import_great_expectations()
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed goes to the log, not into the protocol
    while True:
        try:
            suite_name, spec, frame = read_message(requests)
        except EOFError:
            return
        try:
            outcomes = gx.validate_here(frame, suite_name, spec)
            answer: tuple[str, object] = ("outcomes", outcomes)
        except gx.SuiteError as exc:
            answer = ("raised", exc)
        try:
            write_message(answers, answer)
        except BrokenPipeError:
            return


if __name__ == "__main__":
    serve()
    sys.stderr.flush()
    os._exit(0)  # skip tearing down GX, pandas and scipy object by object
