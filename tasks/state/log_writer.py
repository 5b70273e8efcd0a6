"""Accepted requests recorded from a load's request threads, one transaction per batch.

A request thread hands its landed products to this writer and goes on sending; the writer
takes whatever landed in the last WINDOW_SECONDS and records it in one transaction, one log
row per request. A commit per request would cost each its transaction's fixed cost (mostly
SQLAlchemy's and SQLite's), and a thread waiting for another's commit would leave its request
slot idle.

A product is recorded only after the API accepted it, and a chunk's attempt does not end (nor
is it retried) before everything that landed in it is recorded (leaving the writer's `with`
block waits for that). A process killed in between loses at most the last window's records;
the next run sends those products again, which is harmless since quantities are absolute.
"""

from __future__ import annotations

import queue
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from tasks.state.store import StateStore

# A batch holds whatever lands in this time (during a full sync, several requests); a chunk's
# last request does not wait it out: leaving the block ends the batch.
WINDOW_SECONDS = 0.02
_CLOSE = object()


class LogWriter:
    """`with store.log_writer(run) as log: ... log.add(landed) ...`, from any thread.

    Leaving the block waits until every product added is recorded. A failure to record
    (a lost run lock, a full disk) is raised by the next `add` and by leaving the block,
    and nothing is recorded after it.
    """

    def __init__(self, store: StateStore, run: str, window: float = WINDOW_SECONDS) -> None:
        self._store, self._run, self._window = store, run, window
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="state-log-writer", daemon=True)
        self.transactions = 0  # for tests and figures

    def __enter__(self) -> LogWriter:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._queue.put(_CLOSE)
        self._thread.join()
        if self._error is not None and exc is None:
            raise self._error

    def add(self, landed: pl.DataFrame) -> None:
        """Record these products (id, quantity) as landed, soon; raises if recording failed."""
        if self._error is not None:
            raise self._error
        if landed.height:
            self._queue.put(landed)

    def _write(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is _CLOSE:
                return
            batch = [first]
            deadline = time.monotonic() + self._window
            while (left := deadline - time.monotonic()) > 0:
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if item is _CLOSE:
                    closing = True
                    break
                batch.append(item)
            try:
                self._store.commit_all(batch, self._run)  # type: ignore[arg-type]
                self.transactions += 1
            except BaseException as exc:  # raised in the load's threads by add() and on exit
                self._error = exc
                return
