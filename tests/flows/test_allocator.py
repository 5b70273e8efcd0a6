"""A run's process returns freed memory: jemalloc's setting before polars loads, glibc's threshold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.allocator import JEMALLOC_CONF, JEMALLOC_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, os, sys
{before}
import flows.cli.app  # what the `inventory-sync` command imports first
assert {before!r} or "polars" not in sys.modules, "the command imported polars too early"
from flows.process import prepare_process
prepare_process()  # what `run` does once it holds the state's lock, before reading anything
import polars
print(json.dumps({{"conf": os.environ.get("{env}")}}))
"""


def probe(before: str = "", **env: str) -> dict[str, str | None]:
    environment = {k: v for k, v in os.environ.items() if k != JEMALLOC_ENV} | env
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before, env=JEMALLOC_ENV)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=120,
        check=True,
    )
    result: dict[str, str | None] = json.loads(done.stdout.splitlines()[-1])
    return result


POLARS_OWN = "dirty_decay_ms:500,muzzy_decay_ms:1000"  # polars/__init__.py adds the user's after


def test_the_command_sets_jemalloc_to_return_freed_pages_before_polars_loads() -> None:
    assert probe() == {"conf": f"{POLARS_OWN},{JEMALLOC_CONF}"}


def test_a_users_own_jemalloc_setting_is_kept() -> None:
    assert probe(**{JEMALLOC_ENV: "narenas:2"}) == {"conf": f"{POLARS_OWN},narenas:2"}


def test_nothing_is_pretended_once_polars_is_loaded() -> None:
    """jemalloc has read its settings by then: setting the variable would claim an effect."""
    assert probe(before="import polars") == {"conf": POLARS_OWN}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_keeps_a_fixed_mmap_threshold() -> None:
    from flows.allocator import release_freed_memory

    assert release_freed_memory() is True
