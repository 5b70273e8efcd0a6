"""The leaky-bucket pacer on a fake clock: it waits for room instead of collecting 429s."""

from __future__ import annotations

import pytest

from tasks.lightspeed.pacing import BucketPacer, read_bucket

pytestmark = pytest.mark.fast


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def headers(used: float, size: float = 60, drip: float = 1) -> dict[str, str]:
    return {"X-LS-API-Bucket-Level": f"{used}/{size}", "X-LS-API-Drip-Rate": str(drip)}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (headers(12.5), (12.5, 60.0, 1.0)),
        ({"X-LS-API-Bucket-Level": "3/60"}, None),  # no drip rate
        ({"X-LS-API-Bucket-Level": "lots", "X-LS-API-Drip-Rate": "1"}, None),
        ({"X-LS-API-Bucket-Level": "3/0", "X-LS-API-Drip-Rate": "1"}, None),
        ({}, None),
    ],
)
def test_bucket_headers_are_read_or_ignored(given, expected):
    reading = read_bucket(given)
    assert (reading and (reading.used, reading.size, reading.drip_per_second)) == expected


def test_without_bucket_headers_nothing_waits():
    clock = FakeClock()
    pacer = BucketPacer(clock=clock, sleep=clock.sleep)
    for _ in range(100):
        pacer.before(10)
        pacer.after(10, {})
    assert clock.slept == [] and pacer.waited_seconds == 0


def test_a_full_bucket_waits_for_exactly_the_room_it_needs():
    clock = FakeClock()
    pacer = BucketPacer(clock=clock, sleep=clock.sleep)
    pacer.before(1)
    pacer.after(1, headers(55, size=60, drip=2))  # 55 of 60 used, draining 2 units a second
    pacer.before(10)  # needs 5 more units of room: 2.5 s
    assert clock.slept == [pytest.approx(2.5)]
    assert pacer.waited_seconds == pytest.approx(2.5) and pacer.waits == 1


def test_costs_in_flight_count_against_the_room():
    clock = FakeClock()
    pacer = BucketPacer(clock=clock, sleep=clock.sleep)
    pacer.before(1)
    pacer.after(1, headers(0, size=30, drip=10))
    for _ in range(3):
        pacer.before(10)  # three PUTs in flight fill the bucket
    assert clock.slept == []
    pacer.before(10)  # a fourth must wait for one PUT's worth to drain
    assert clock.slept == [pytest.approx(1.0)]


def test_headers_gone_means_pacing_stops():
    clock = FakeClock()
    pacer = BucketPacer(clock=clock, sleep=clock.sleep)
    pacer.before(1)
    pacer.after(1, headers(60, size=60, drip=1))
    pacer.before(1)
    pacer.after(1, {})  # the API no longer reports a bucket
    pacer.before(10)
    assert clock.slept == [pytest.approx(1.0)]  # only the wait before the headers went
