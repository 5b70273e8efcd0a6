"""One duration format for the whole run: a clock for what is running, one unit for an age."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tasks.durations import duration

pytestmark = pytest.mark.fast


def test_durations_read_like_a_clock():
    assert [duration(s) for s in (4.25, 65, 3600 + 600)] == ["4.2s", "1m05s", "1h10m"]


@pytest.mark.parametrize(
    ("age", "shown"),
    [
        (timedelta(seconds=40), "40s"),
        (timedelta(minutes=12), "12.0m"),
        (timedelta(hours=1, minutes=30), "1.5h"),
        (timedelta(hours=2), "2.0h"),
        (timedelta(days=3), "3.0d"),
        (90.0, "1.5m"),
    ],
)
def test_an_age_at_a_glance_is_one_unit_to_a_tenth(age, shown):
    assert duration(age, glance=True) == shown
