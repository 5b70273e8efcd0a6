"""CSV exports on disk: encodings, line endings, globs, and errors that name the cause."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from tasks.sources.csv import CsvWarehouse
from tasks.sources.extract import read_feed
from tasks.sources.feed import WarehouseUnreadable

pytestmark = pytest.mark.fast


def csv_wh(path: Path | str, **extra) -> CsvWarehouse:
    fields = {
        "name": "east",
        "kind": "csv",
        "path": str(path),
        "sku_column": "sku",
        "quantity_column": "qty",
    }
    return CsvWarehouse(**(fields | extra))


def read(path: Path, data: bytes, **extra) -> pl.DataFrame:
    """The feed's rows with the line each came from."""
    path.write_bytes(data)
    return read_feed(csv_wh(path, **extra)).numbered()


def test_values_are_read_as_text_with_line_numbers(tmp_path):
    rows = read(tmp_path / "f.csv", b"sku,bin,qty\nA,1,007\nB,2,3.0\n")
    assert rows.select("sku_text", "quantity_text", "line").rows() == [
        ("A", "007", 2),
        ("B", "3.0", 3),
    ]
    assert read_feed(csv_wh(tmp_path / "f.csv")).warehouse == "east"


def test_utf8_bom_and_crlf(tmp_path):
    rows = read(tmp_path / "f.csv", b"\xef\xbb\xbfsku,qty\r\nA,1\r\nB,2\r\n")
    assert rows.select("sku_text", "quantity_text").rows() == [("A", "1"), ("B", "2")]


def test_unicode_skus_and_other_encodings(tmp_path):
    text = "sku;qty\nSÜSS-TEE;4\nCAFÉ-№1;2\n"
    rows = read(tmp_path / "utf8.csv", text.encode("utf-8"), delimiter=";")
    assert rows["sku_text"].to_list() == ["SÜSS-TEE", "CAFÉ-№1"]
    latin = "sku;qty\nSÜSS-TEE;4\nCAFÉ;2\n".encode("cp1252")
    rows = read(tmp_path / "cp.csv", latin, delimiter=";", encoding="cp1252")
    assert rows["sku_text"].to_list() == ["SÜSS-TEE", "CAFÉ"]


def test_invalid_utf8_names_the_line(tmp_path):
    with pytest.raises(WarehouseUnreadable, match=r"line 3 is not valid UTF-8.*encoding"):
        read(tmp_path / "f.csv", b"sku,qty\nA,1\nB\xe9,2\n")


def test_padded_header_names_are_matched(tmp_path):
    rows = read(tmp_path / "f.csv", b" sku , qty \nA,1\n")
    assert rows["quantity_text"].to_list() == ["1"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "file is empty"),
        (b"\xef\xbb\xbf\r\n", "file is empty"),
        (b"sku,qty\n", "has a header but no rows"),
        (b"sku,amount\nA,1\n", "missing column\\(s\\) 'qty'; the file has 'sku', 'amount'"),
        (b"sku,qty\nA,1\nB,2,3,4\n", "not a readable CSV"),
        (
            b"sku,qty,qty\nA,1,2\n",
            r"quantity_column 'qty' is ambiguous: the header has 'qty' 2 times \(columns 2 and 3\)",
        ),
        (
            b"sku, qty,qty ,qty\nA,1,2,3\n",
            r"the header has 'qty' 3 times \(columns 2, 3 and 4\)",
        ),
        (
            b"sku,qty,QTY\nA,1,2\n",
            r"quantity_column 'qty' is ambiguous: 2 columns match it when case and surrounding "
            r"spaces are ignored: 'qty' \(column 2\), 'QTY' \(column 3\); refusing to guess",
        ),
        (b"SKU,qty,sku\nA,1,B\n", r"sku_column 'sku' is ambiguous: .*'SKU' \(column 1\)"),
        (b"\x1f\x8b\x08\x00\x00\x00", "gzip-compressed, not CSV text \\(decompress it first\\)"),
        (b"PK\x03\x04\x14\x00", "a ZIP archive, not CSV text"),
    ],
)
def test_unreadable_feeds_name_warehouse_and_file(tmp_path, data, message):
    path = tmp_path / "f.csv"
    with pytest.raises(WarehouseUnreadable, match=message) as info:
        read(path, data)
    assert str(info.value).startswith("warehouse 'east': ")
    assert str(path) in str(info.value)


def test_a_repeated_column_the_sync_does_not_read_is_harmless(tmp_path):
    rows = read(tmp_path / "f.csv", b"sku,note,qty,note\nA,x,1,y\n")
    assert rows.select("sku_text", "quantity_text").rows() == [("A", "1")]


def test_a_timestamp_column_must_be_unambiguous_too(tmp_path):
    with pytest.raises(WarehouseUnreadable, match="timestamp_column 'at' is ambiguous"):
        read(tmp_path / "f.csv", b"sku,qty,at,AT\nA,1,2026-01-01,x\n", timestamp_column="at")


def test_a_folder_is_not_a_feed(tmp_path):
    with pytest.raises(WarehouseUnreadable, match=r"is a folder; path must name a file, or a glob"):
        read_feed(csv_wh(tmp_path))


def test_header_only_is_accepted_when_allowed(tmp_path):
    assert read(tmp_path / "f.csv", b"sku,qty\n", allow_empty=True).height == 0


def test_missing_file_names_the_pattern(tmp_path):
    with pytest.raises(
        WarehouseUnreadable, match=r"warehouse 'east': no file matches .*east-\*\.csv"
    ):
        read_feed(csv_wh(tmp_path / "east-*.csv"))


def test_glob_picks_the_newest_file(tmp_path):
    old, new = tmp_path / "east-2.csv", tmp_path / "east-1.csv"
    old.write_bytes(b"sku,qty\nOLD,1\n")
    new.write_bytes(b"sku,qty\nNEW,1\n")
    os.utime(old, (1_000_000, 1_000_000))
    feed = read_feed(csv_wh(tmp_path / "east-*.csv"))
    assert feed.rows["sku_text"].to_list() == ["NEW"]
    assert feed.source == str(new)
