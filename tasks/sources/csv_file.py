"""CSV exports on disk, and the CSV parsing the SFTP drops share."""

from __future__ import annotations

import io
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import polars as pl

from tasks.sources.feed import Feed, Secrets, SourceKind, WarehouseUnreadable, feed_frame
from tasks.sources.local_files import FileWarehouse, newest_file, read_bytes
from tasks.sources.warehouse import CsvOptions

if TYPE_CHECKING:
    from tasks.sources.sftp_drop import SftpWarehouse

UTF8_BOM = b"\xef\xbb\xbf"


class CsvWarehouse(FileWarehouse, CsvOptions):
    kind: Literal["csv"]


def read_csv_feed(warehouse: CsvWarehouse, secrets: Secrets | None = None) -> Feed:
    """Read a CSV export from disk."""
    path = newest_file(warehouse.name, warehouse.path)
    data, modified = read_bytes(warehouse.name, path)
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


KIND = SourceKind("csv", CsvWarehouse, read_csv_feed)
