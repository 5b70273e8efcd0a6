"""CSV exports on disk, and the CSV parsing the SFTP drops share."""

from __future__ import annotations

import io
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from tasks.sources.feed import Feed, Secrets, SourceKind, WarehouseUnreadable, feed_frame
from tasks.sources.local_files import FileWarehouse, newest_file, probe_file, read_bytes
from tasks.sources.warehouse import CsvOptions

if TYPE_CHECKING:
    from tasks.sources.sftp import SftpWarehouse

UTF8_BOM = b"\xef\xbb\xbf"
NOT_TEXT = {  # what a CSV export is sometimes confused with: its first bytes, what it is, what to do
    b"\x1f\x8b": ("gzip-compressed", "decompress it first"),
    b"PK\x03\x04": ("a ZIP archive", "an Excel workbook? export it as CSV"),
    b"PAR1": ("a Parquet file", 'use kind = "parquet"'),
}


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
    """Parse a CSV export's bytes: every cell as text, so nothing is coerced before the checks.

    Only the configured columns are parsed (the header is read first): a feed's other columns
    (bins, descriptions, ...) would cost time and memory and are never looked at.
    """
    size = len(data)
    for signature, (what, hint) in NOT_TEXT.items():
        if data.startswith(signature):
            raise WarehouseUnreadable(warehouse.name, f"{source}: {what}, not CSV text ({hint})")
    data = _as_utf8(warehouse.name, source, data, warehouse.encoding)
    if not data.strip():
        raise WarehouseUnreadable(warehouse.name, f"{source}: file is empty (no header row)")
    try:
        parsed = _read(data, warehouse.delimiter, n_rows=0).columns
        header = _header(data, warehouse.delimiter, parsed)
        names = dict(zip(parsed, _unique(header, parsed), strict=True))  # polars' → ours
        wanted = {warehouse.sku_column, warehouse.quantity_column, warehouse.timestamp_column}
        columns = [own for own, name in names.items() if name in wanted]
        if len(columns) == len(wanted - {None}):
            frame = _read(data, warehouse.delimiter, columns=columns)
        else:  # feed_frame says what is missing
            frame = pl.DataFrame(schema=dict.fromkeys(parsed, pl.String))
        frame = frame.rename({own: names[own] for own in frame.columns})
    except pl.exceptions.PolarsError as exc:
        raise WarehouseUnreadable(warehouse.name, f"{source}: not a readable CSV: {exc}") from None
    return feed_frame(warehouse, source, frame, size, modified, first_line=2, header=header)


def _header(data: bytes, delimiter: str, parsed: list[str]) -> list[str]:
    """The header's names as written, trimmed: polars renames a repeated name (`qty_duplicated_0`)."""
    first = pl.read_csv(
        io.BytesIO(data), separator=delimiter, infer_schema=False, has_header=False, n_rows=1
    )
    names = [name or "" for name in first.row(0)] if first.height else parsed
    return [name.strip() for name in (names if len(names) == len(parsed) else parsed)]


def _unique(header: list[str], parsed: list[str]) -> list[str]:
    """The trimmed names, except where trimming makes two alike (polars' own name is kept)."""
    seen = Counter(header)
    return [name if seen[name] == 1 else own for name, own in zip(header, parsed, strict=True)]


def _read(data: bytes, delimiter: str, **options: Any) -> pl.DataFrame:
    return pl.read_csv(
        io.BytesIO(data), separator=delimiter, infer_schema=False, has_header=True, **options
    )


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


KIND = SourceKind("csv", CsvWarehouse, read_csv_feed, probe=probe_file)
