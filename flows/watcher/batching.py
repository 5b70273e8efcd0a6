"""When a change is an arrival, and when arrivals become a run: settling, the window, no overlap.

Pure bookkeeping on times the caller passes in (monotonic seconds, and the wall clock for run
creation times), so every rule is tested without a clock, a disk or a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from tasks.sources.feed import Fingerprint

CLOCK_SLACK = timedelta(seconds=2)  # a run the server created just before our own clock said so


@dataclass
class _Pending:
    fingerprint: Fingerprint
    since: float
    last_seen: float


class Settling:
    """Feeds whose fingerprint changed, until it has held for `settle` seconds.

    A file still being written changes size and time, so it keeps restarting its clock and is
    not an arrival until the writer has paused for longer than `settle`.
    """

    def __init__(self, settle: float, known: Mapping[str, Fingerprint]) -> None:
        self.settle = settle
        self.known = dict(
            known
        )  # the last fingerprint per warehouse that settled (or the baseline)
        self._pending: dict[str, _Pending] = {}

    def observe(self, warehouse: str, fingerprint: Fingerprint | None, now: float) -> None:
        """Record what a probe saw; None (no file, probe failed) forgets a pending change."""
        if fingerprint is None or fingerprint == self.known.get(warehouse):
            self._pending.pop(warehouse, None)
            return
        pending = self._pending.get(warehouse)
        if pending is not None and pending.fingerprint == fingerprint:
            pending.last_seen = now
        else:
            self._pending[warehouse] = _Pending(fingerprint, now, now)

    def unsettled(self) -> list[str]:
        """Warehouses whose change has not held long enough yet: probe them again soon."""
        return list(self._pending)

    def settled(self) -> dict[str, Fingerprint]:
        """The changes seen unchanged for `settle` seconds; from now on they are known."""
        done = {
            warehouse: pending.fingerprint
            for warehouse, pending in self._pending.items()
            if pending.last_seen - pending.since >= self.settle
        }
        for warehouse, fingerprint in done.items():
            del self._pending[warehouse]
            self.known[warehouse] = fingerprint
        return done


class Batch:
    """Settled arrivals waiting to become one event, `window` seconds after the first of them."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.feeds: dict[str, Fingerprint] = {}
        self.opened: float | None = None

    def add(self, arrivals: Mapping[str, Fingerprint], now: float) -> None:
        """Take arrivals in; the first one opens the window. A newer feed replaces an older one."""
        if arrivals and self.opened is None:
            self.opened = now
        self.feeds.update(arrivals)

    def ready(self, now: float) -> bool:
        """Whether the window of the first arrival has passed."""
        return self.opened is not None and now - self.opened >= self.window

    def take(self) -> dict[str, Fingerprint]:
        """Everything waiting, emptying the batch."""
        feeds, self.feeds, self.opened = self.feeds, {}, None
        return feeds


@dataclass(frozen=True)
class RunView:
    """What the gate needs of a flow run of the triggered deployment."""

    created: datetime
    active: bool  # scheduled and due, pending, running, paused or cancelling


class RunGate:
    """No event while a run is in flight, nor while the last event has not yet become a run.

    Arrivals held back meanwhile wait in the batch, so whatever arrives during a run leads to
    exactly one follow-up run, which reads every warehouse that changed.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace  # how long an event may take to become a run before we stop waiting
        self._sent_at: datetime | None = None
        self._sent_clock = 0.0
        self.gave_up = False  # the last event never became a run within the grace

    def sent(self, wall: datetime, now: float) -> None:
        """An event went out: until its run appears, the gate stays shut."""
        self._sent_at, self._sent_clock, self.gave_up = wall, now, False

    def open(self, runs: Iterable[RunView], now: float) -> bool:
        """Whether another event may go out now."""
        runs = list(runs)
        if self._sent_at is not None:
            if any(run.created >= self._sent_at - CLOCK_SLACK for run in runs):
                self._sent_at = None
            elif now - self._sent_clock < self.grace:
                return False
            else:
                self._sent_at, self.gave_up = None, True
        return not any(run.active for run in runs)
