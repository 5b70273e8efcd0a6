"""A run's process gives the memory it frees back to the system instead of keeping it.

Two allocators hold a run's memory: polars' own jemalloc for frames, and glibc's malloc for
Python's large objects (a feed file's bytes, pickles, the pandas arrays GX checks). By default
both keep what a stage freed for later reuse: jemalloc for 0.5-1.5 s (polars' own decay
settings), and glibc in the arena of whichever thread freed it once a large block has been
freed (its mmap threshold then rises to that block's size, so the next feed file's bytes come
from an arena and stay there). At 1M products that retained memory was a quarter of the
transform's peak: the feeds' bytes read by eight threads, and frames freed stage by stage.

`release_freed_memory()` runs when the `tasks` package is first imported (tasks/__init__.py),
which every run's process does before it imports polars: the CLI, a worker's flow-run process
and Prefect's own engine loading flows/sync.py. jemalloc reads its settings once, when polars
loads, so a later call only changes glibc's threshold. polars appends a user's own
_RJEM_MALLOC_CONF to its defaults; a user's value is left as it is.

Measured at 1M (benchmarks/transform.py's child): decay 0/0 gave the lowest peak (1.03 GB) but
cost 1-2 s of purging; 200 ms/0 gave 1.07-1.13 GB at polars' default speed; polars' own
settings 1.19 GB with the glibc threshold alone, 1.40 GB with neither.
"""

from __future__ import annotations

import ctypes
import os
import sys

JEMALLOC_ENV = "_RJEM_MALLOC_CONF"  # the name polars' jemalloc reads (it is built with a prefix)
JEMALLOC_CONF = "dirty_decay_ms:200,muzzy_decay_ms:0"  # freed pages go back within 0.2 s
M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept fixed instead of rising


def release_freed_memory() -> bool:
    """Set both allocators to return freed memory; True if glibc's threshold was set."""
    if "polars" not in sys.modules:
        os.environ.setdefault(JEMALLOC_ENV, JEMALLOC_CONF)
    if not sys.platform.startswith("linux"):
        return False
    try:  # the process's own symbols: libc is loaded (find_library would run ldconfig, ~5 ms)
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
