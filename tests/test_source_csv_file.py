"""CSV exports on disk: encodings, line endings, globs, and errors that name the cause."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from tasks.sources.csv_file import CsvWarehouse
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
    path.write_bytes(data)
    return read_feed(csv_wh(path, **extra)).rows


def test_values_are_read_as_text_with_line_numbers(tmp_path):
    rows = read(tmp_path / "f.csv", b"sku,bin,qty\nA,1,007\nB,2,3.0\n")
    assert rows.select("sku_text", "quantity_text", "line").rows() == [
        ("A", "007", 2),
        ("B", "3.0", 3),
    ]
    assert rows["warehouse"].unique().to_list() == ["east"]


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
    ],
)
def test_unreadable_feeds_name_warehouse_and_file(tmp_path, data, message):
    path = tmp_path / "f.csv"
    with pytest.raises(WarehouseUnreadable, match=message) as info:
        read(path, data)
    assert str(info.value).startswith("warehouse 'east': ")
    assert str(path) in str(info.value)


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
