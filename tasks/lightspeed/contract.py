"""What the platform's data means: the largest quantity it holds and how its flags are written."""

from __future__ import annotations

from typing import Any

MAX_QUANTITY = 2_147_483_647  # quantities are 32-bit signed integers on the platform
TRACKED, BACKORDER = "isInventoryTrackingEnabled", "isBackorderingEnabled"


class FlagError(ValueError):
    """A flag value that is neither true nor false in any of the ways the platform writes them."""


def parse_flag(value: Any) -> bool:
    """A platform flag: true, false, [true], [false] or absent (false), as JSON or as CSV text."""
    if isinstance(value, list):
        if len(value) != 1:
            raise FlagError(f"expected one value in {value!r}")
        value = value[0]
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().strip("[]").strip().lower()
        if text in ("", "false", "0"):
            return False
        if text in ("true", "1"):
            return True
    raise FlagError(f"not a boolean flag: {value!r}")
