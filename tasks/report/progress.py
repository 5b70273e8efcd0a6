"""Counts of the long stages as they happen: pages read, chunks sent, products landed, retries, waits.

The stages only count (cheaply, from any thread); the CLI reads snapshots and shows them. Nothing
here knows Prefect or a terminal: a deployment run counts, and nothing shows it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class StageSnapshot:
    """One stage's counts at one moment."""

    name: str
    unit: str  # what `done` counts, singular: "page", "chunk"
    done: int
    total: int | None
    items_label: str  # what `items` counts: "products read", "products landed"
    items: int
    items_total: int | None
    retries: int
    failed: int
    waited_seconds: float  # waiting the platform asked for (Retry-After, pacing)
    elapsed_seconds: float
    finished: bool

    @property
    def eta_seconds(self) -> float | None:
        """Time left at the pace so far, when the stage knows its total."""
        if self.finished or not self.total or not self.done:
            return None
        return self.elapsed_seconds * (self.total - self.done) / self.done


class Stage:
    """The counters of one long stage; every method is safe to call from any thread."""

    def __init__(
        self,
        name: str,
        unit: str,
        total: int | None,
        items_label: str,
        items_total: int | None,
        retries: int,
    ) -> None:
        self._lock = threading.Lock()
        self._name, self._unit, self._total = name, unit, total
        self._items_label, self._items_total = items_label, items_total
        self._done = self._items = self._failed = 0
        self._retries = retries
        self._waited = 0.0
        self._client_retries, self._client_waited = 0, 0.0
        self._started = time.monotonic()
        self._finished_at: float | None = None

    def advance(self, done: int = 0, items: int = 0) -> None:
        """Count units done (pages, chunks) and items (products) read or landed."""
        with self._lock:
            self._done += done
            self._items += items

    def retried(self) -> None:
        with self._lock:
            self._retries += 1

    def failed(self) -> None:
        """Count a unit that finally failed (it counts as done too)."""
        with self._lock:
            self._failed += 1
            self._done += 1

    def waited(self, seconds: float) -> None:
        with self._lock:
            self._waited += seconds

    def set_client_totals(self, retries: int, waited_seconds: float) -> None:
        """What the API client counts itself: per-request read retries, waits for its pacing."""
        with self._lock:
            self._client_retries, self._client_waited = retries, waited_seconds

    def finish(self) -> None:
        with self._lock:
            self._finished_at = self._finished_at or time.monotonic()

    def snapshot(self) -> StageSnapshot:
        with self._lock:
            end = self._finished_at or time.monotonic()
            return StageSnapshot(
                self._name,
                self._unit,
                self._done,
                self._total,
                self._items_label,
                self._items,
                self._items_total,
                self._retries + self._client_retries,
                self._failed,
                self._waited + self._client_waited,
                end - self._started,
                self._finished_at is not None,
            )


class Progress:
    """The long stages of the run in this process, in the order they started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, Stage] = {}

    def start(
        self,
        name: str,
        unit: str,
        *,
        total: int | None = None,
        items_label: str = "products",
        items_total: int | None = None,
        retries: int = 0,
    ) -> Stage:
        """A fresh stage (replacing one of the same name: a task retry starts it again)."""
        stage = Stage(name, unit, total, items_label, items_total, retries)
        with self._lock:
            self._stages.pop(name, None)
            self._stages[name] = stage
        return stage

    def stage(self, name: str) -> Stage:
        """The stage of that name; one that counts for nobody if it was never started."""
        with self._lock:
            found = self._stages.get(name)
        return found or Stage(name, "", None, "", None, 0)

    def clear(self) -> None:
        with self._lock:
            self._stages.clear()

    def snapshot(self) -> list[StageSnapshot]:
        with self._lock:
            stages = list(self._stages.values())
        return [stage.snapshot() for stage in stages]


_progress = Progress()


def current() -> Progress:
    """The progress of this process's run."""
    return _progress
