"""Pace requests by the platform's leaky bucket, so a run waits for room instead of collecting 429s.

Lightspeed's Retail API reports `X-LS-API-Bucket-Level: used/size` and `X-LS-API-Drip-Rate` on
every response; the bucket is per account, shared by every integration and every concurrent
request. Without those headers the pacer never waits.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

LEVEL_HEADER = "X-LS-API-Bucket-Level"
DRIP_HEADER = "X-LS-API-Drip-Rate"
_LEVEL = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*([0-9]+(?:\.[0-9]+)?)\s*$")


@dataclass(frozen=True)
class BucketReading:
    used: float
    size: float
    drip_per_second: float


def read_bucket(headers: Mapping[str, str]) -> BucketReading | None:
    """The bucket as a response reports it, or None when the headers are absent or malformed."""
    level = _LEVEL.match(headers.get(LEVEL_HEADER, ""))
    try:
        drip = float(headers.get(DRIP_HEADER, ""))
    except ValueError:
        return None
    if level is None or drip <= 0 or float(level[2]) <= 0:
        return None
    return BucketReading(float(level[1]), float(level[2]), drip)


@dataclass
class BucketPacer:
    """One account's bucket as this process believes it is: the last reading plus what is in flight.

    Before a request: wait until the estimated level plus its cost fits in the bucket, then count
    the cost. After a response: the reported level, plus the costs still in flight, is the new
    estimate. Thread-safe; `waited_seconds` adds up every wait.
    """

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    level: float = 0.0
    size: float | None = None  # unknown until a response reports the bucket
    drip_per_second: float = 0.0
    at: float = 0.0
    in_flight: float = 0.0
    waited_seconds: float = 0.0
    waits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _drained(self, now: float) -> float:
        return max(0.0, self.level - self.drip_per_second * (now - self.at))

    def before(self, cost: float) -> None:
        """Block until the bucket has room for `cost`, then count it as in flight."""
        while True:
            with self._lock:
                now = self.clock()
                if self.size is None:
                    self.in_flight += cost
                    return
                level = self._drained(now)
                room_needed = level + cost - self.size
                if room_needed <= 0:
                    self.level, self.at = level + cost, now
                    self.in_flight += cost
                    return
                wait = room_needed / self.drip_per_second
                self.waited_seconds += wait
                self.waits += 1
            self.sleep(wait)

    def after(self, cost: float, headers: Mapping[str, str] | None) -> None:
        """Take in a response's report of the bucket (or just release the cost on no answer)."""
        reading = read_bucket(headers) if headers is not None else None
        with self._lock:
            self.in_flight = max(0.0, self.in_flight - cost)
            if headers is None:
                return  # no answer: nothing learned
            if reading is None:
                self.size = None  # the API reports no bucket (any more): no pacing
                return
            self.size, self.drip_per_second = reading.size, reading.drip_per_second
            self.level, self.at = reading.used + self.in_flight, self.clock()


_pacers: dict[tuple[str, str], BucketPacer] = {}
_pacers_lock = threading.Lock()


def account_pacer(base_url: str, token: str) -> BucketPacer:
    """The one pacer of an account (API root and token) in this process, shared by all its clients."""
    with _pacers_lock:
        return _pacers.setdefault((base_url, token), BucketPacer())
