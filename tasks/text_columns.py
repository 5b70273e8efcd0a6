"""Million-row text columns, handled at about the cost of reading them once.

Keying a hash table by a million strings, or trimming a million strings that need no
trimming, each cost a large share of a run's transform; these do neither when they can.
"""

from __future__ import annotations

import polars as pl

PADDED = r"^\s|\s$"  # text str.strip_chars() would change: both mean Unicode White_Space


def is_duplicated(values: pl.Series) -> pl.Series:
    """values.is_duplicated(), decided on 64-bit hashes first and confirmed on the strings.

    Equal strings have equal hashes, so only values whose hash repeats can repeat; those few
    are compared as strings. Keying a hash table by a million strings cost 3-4x as much.
    """
    maybe = values.hash().is_duplicated()
    if not maybe.any():
        return maybe
    positions = maybe.arg_true()
    return maybe.scatter(positions, values.gather(positions).is_duplicated())


def needs_trimming(values: pl.Series) -> bool:
    """Whether any value has whitespace at either end (a scan, where trimming would copy all)."""
    return bool(values.str.contains(PADDED).any())
