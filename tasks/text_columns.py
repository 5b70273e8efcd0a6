"""Million-row text columns, handled at about the cost of reading them once.

Keying a hash table by a million strings, or matching a regex against each, costs a large
share of a run's transform; these do neither when they can.
"""

from __future__ import annotations

import polars as pl


def is_duplicated(values: pl.Series) -> pl.Series:
    """values.is_duplicated(), decided on 64-bit hashes first and confirmed on the strings.

    Equal strings have equal hashes, so only values whose hash repeats can repeat; those few
    are compared as strings. The repeated hashes are found by sorting them (a radix sort)
    and comparing neighbours: cheaper than keying a hash table by them, which in turn is
    cheaper than keying one by the million strings.
    """
    hashes = values.hash()
    ordered = hashes.sort()
    repeated = ordered.filter(ordered == ordered.shift(1))
    if not repeated.len():
        return pl.repeat(False, values.len(), eager=True).alias(values.name)
    maybe = hashes.is_in(repeated.implode())
    positions = maybe.arg_true()
    return maybe.scatter(positions, values.gather(positions).is_duplicated())


def needs_trimming(values: pl.Series) -> bool:
    """Whether any value has whitespace at either end (Unicode White_Space, as strip_chars).

    Trimmed and compared: faster than a regex for whitespace at either end, on a feed's SKUs;
    the trimmed copy is dropped.
    """
    return not values.str.strip_chars().equals(values)
