"""A run's process gives the memory it frees back to the system instead of keeping it.

Two allocators hold a run's memory: polars' own jemalloc for frames, and glibc's malloc for
Python's large objects (a feed file's bytes, pickles, the pandas arrays GX checks). By default
both keep what a stage freed for later reuse: jemalloc for 0.5-1.5 s (polars' own decay
settings), and glibc in the arena of whichever thread freed it once a large block has been
freed (its mmap threshold then rises to that block's size, so the next feed file's bytes come
from an arena and stay there). At a million products that retained memory is a large share of
the transform's peak: the feeds' bytes read by eight threads, and frames freed stage by stage.

`release_freed_memory()` runs in `prepare_process()` (flows/process.py), which the CLI and a
worker's flow-run process call before they import polars. jemalloc reads its settings once,
when polars loads, so a later call (the flow's own, say) only changes glibc's threshold. polars
appends a user's own _RJEM_MALLOC_CONF to its defaults; a user's value is left as it is.

The decay chosen is the middle way: returning pages at once gives the lowest peak but costs
time purging, and polars' own settings keep the most.
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
    try:  # the process's own symbols: libc is loaded (find_library would run ldconfig)
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
