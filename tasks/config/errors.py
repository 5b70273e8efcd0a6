"""A configuration problem, told as the user wrote the file: one line per key, warehouses by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from tasks.errors import SyncError


class ConfigError(SyncError):
    """The configuration file is missing, unreadable or invalid; the message names the key."""


def describe_errors(exc: ValidationError, data: Mapping[str, Any], kinds: Sequence[str]) -> str:
    """One line per problem, naming the key as a user wrote it (warehouses by name too)."""
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        parts: list[str] = []
        for i, item in enumerate(loc):
            if isinstance(item, int):
                parts[-1] += f"[{item}]"
                if loc[:i] == ["warehouses"]:
                    name = _warehouse_name(data, item)
                    if name:
                        parts[-1] += f' (name = "{name}")'
            elif i > 0 and loc[i - 1] != "warehouses" and item in kinds and i == 2:
                continue  # pydantic's tag for the discriminated union, not a key the user wrote
            else:
                parts.append(str(item))
        key = ".".join(parts) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check its spelling)"
        elif error["type"] == "union_tag_invalid":
            message = f"kind must be one of {', '.join(kinds)}"
        elif error["type"] == "union_tag_not_found":
            message = f"missing kind (one of {', '.join(kinds)})"
        lines.append(f"  - {key}: {message}")
    return "\n".join(lines)


def _warehouse_name(data: Mapping[str, Any], index: int) -> str | None:
    warehouses = data.get("warehouses")
    if isinstance(warehouses, list) and index < len(warehouses):
        entry = warehouses[index]
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            return entry["name"]
    return None
