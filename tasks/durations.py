"""Durations as people read them: a running clock, or an age at a glance."""

from __future__ import annotations

from datetime import timedelta

AGE_UNITS = (("d", 86400), ("h", 3600), ("m", 60))


def duration(length: float | timedelta, *, glance: bool = False) -> str:
    """4.2s, 3m05s, 2h10m; with `glance`, one unit to a tenth: 40s, 12.0m, 1.5h, 3.0d."""
    seconds = length.total_seconds() if isinstance(length, timedelta) else length
    if glance:
        for unit, size in AGE_UNITS:
            if seconds >= size:
                return f"{seconds / size:.1f}{unit}"
        return f"{seconds:.0f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
