"""The machine a figure was measured on: cores, memory, load average, library versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version

LIBRARIES = ("polars", "pandas", "great_expectations", "prefect", "httpx")


def cores() -> int:
    return os.cpu_count() or 1


def memory_gb() -> float:
    """Total RAM from /proc/meminfo."""
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    return 0.0


def load_average() -> str:
    """`1.23 0.98 0.80`: the 1, 5 and 15 minute load averages."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def describe() -> str:
    """One line: cores, memory, Python and the libraries that do the work."""
    versions = ", ".join(f"{name} {version(name.replace('_', '-'))}" for name in LIBRARIES)
    return (
        f"{cores()} cores, {memory_gb():.0f} GB RAM, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}; {versions}"
    )
