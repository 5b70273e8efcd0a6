"""Warehouse exports on disk: CSV and Parquet files, the newest match of a glob; CSV parsing."""

from __future__ import annotations

import glob
import io
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from tasks.config import CsvWarehouse, ParquetWarehouse, SftpWarehouse
from tasks.sources.feed import Feed, WarehouseUnreadable, feed_frame

UTF8_BOM = b"\xef\xbb\xbf"


def newest_file(warehouse: str, pattern: str) -> Path:
    """The file itself, or the most recently modified file matching the glob."""
    matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
    if not matches:
        raise WarehouseUnreadable(warehouse, f"no file matches {pattern}")
    return max(matches, key=lambda p: (p.stat().st_mtime, p.name))


def read_csv_feed(warehouse: CsvWarehouse) -> Feed:
    """Read a CSV export from disk."""
    path = newest_file(warehouse.name, warehouse.path)
    data, modified = _read_bytes(warehouse.name, path)
    return csv_feed(warehouse, str(path), data, modified)


def csv_feed(
    warehouse: CsvWarehouse | SftpWarehouse, source: str, data: bytes, modified: datetime
) -> Feed:
    """Parse a CSV export's bytes: every cell as text, so nothing is coerced before the checks."""
    size = len(data)
    data = _as_utf8(warehouse.name, source, data, warehouse.encoding)
    if not data.strip():
        raise WarehouseUnreadable(warehouse.name, f"{source}: file is empty (no header row)")
    try:
        frame = pl.read_csv(
            io.BytesIO(data),
            separator=warehouse.delimiter,
            infer_schema=False,
            has_header=True,
        )
    except pl.exceptions.PolarsError as exc:
        raise WarehouseUnreadable(warehouse.name, f"{source}: not a readable CSV: {exc}") from None
    frame = frame.rename({c: c.strip() for c in frame.columns})
    return feed_frame(warehouse, source, frame, size, modified, first_line=2)


def read_parquet_feed(warehouse: ParquetWarehouse) -> Feed:
    """Read a Parquet export; SKU and quantity columns are taken as text for the checks."""
    path = newest_file(warehouse.name, warehouse.path)
    data, modified = _read_bytes(warehouse.name, path)
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except pl.exceptions.PolarsError as exc:
        raise WarehouseUnreadable(
            warehouse.name, f"{path}: not a readable Parquet file: {exc}"
        ) from None
    return feed_frame(warehouse, str(path), frame, len(data), modified, first_line=1)


def _read_bytes(warehouse: str, path: Path) -> tuple[bytes, datetime]:
    try:
        modified = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        return path.read_bytes(), modified
    except OSError as exc:
        raise WarehouseUnreadable(warehouse, f"{path}: cannot read: {exc.strerror}") from None


def _as_utf8(warehouse: str, source: str, data: bytes, encoding: str) -> bytes:
    """UTF-8 without a byte-order mark, decoding other encodings first."""
    if encoding in ("utf-8", "utf-8-sig"):
        data = data.removeprefix(UTF8_BOM)
        if data.isascii():  # valid UTF-8 as it is; decoding would copy the whole file
            return data
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise WarehouseUnreadable(
                warehouse,
                f"{source}: line {line} is not valid UTF-8 (byte {exc.start}); "
                'set encoding = "..." for this warehouse',
            ) from None
        return data
    try:
        return data.decode(encoding).removeprefix("\ufeff").encode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise WarehouseUnreadable(
            warehouse, f"{source}: line {line} is not valid {encoding} (byte {exc.start})"
        ) from None
