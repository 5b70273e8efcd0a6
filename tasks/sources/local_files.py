"""Exports on local disk: the newest file matching a glob, and its bytes with their time."""

from __future__ import annotations

import glob
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field, field_validator

from tasks.config.fields import relative_to_config
from tasks.sources.feed import Fingerprint, Secrets, WarehouseUnreadable
from tasks.sources.warehouse import WarehouseBase


class FileWarehouse(WarehouseBase):
    """A warehouse whose feed is a file on local disk: one path, or a glob of them."""

    path: str = Field(description="file or glob; a glob picks the newest matching file")

    _resolve = field_validator("path")(relative_to_config)


def newest_file(warehouse: str, pattern: str) -> Path:
    """The file itself, or the most recently modified file matching the glob."""
    if Path(pattern).is_dir():
        raise WarehouseUnreadable(
            warehouse,
            f"{pattern} is a folder; path must name a file, or a glob such as "
            f"{Path(pattern) / '*'} (the newest match is read)",
        )
    matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
    if not matches:
        raise WarehouseUnreadable(warehouse, f"no file matches {pattern}")
    return max(matches, key=lambda p: (p.stat().st_mtime, p.name))


def read_bytes(warehouse: str, path: Path) -> tuple[bytes, datetime]:
    """The file's bytes and modification time; an error names the file."""
    try:
        modified = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        return path.read_bytes(), modified
    except OSError as exc:
        raise WarehouseUnreadable(warehouse, f"{path}: cannot read: {exc.strerror}") from None


def probe_file(warehouse: FileWarehouse, secrets: Secrets | None = None) -> Fingerprint:
    """The newest matching file's name, size and modification time, without reading it."""
    path = newest_file(warehouse.name, warehouse.path)
    try:
        info = path.stat()
    except OSError as exc:
        raise WarehouseUnreadable(warehouse.name, f"{path}: cannot stat: {exc.strerror}") from None
    return Fingerprint(str(path), f"{info.st_size}:{info.st_mtime_ns}")
