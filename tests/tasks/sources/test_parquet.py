"""Parquet exports on disk: numbers become text for the checks; a corrupt file names itself."""

from __future__ import annotations

import polars as pl
import pytest

from tasks.sources.extract import read_feed
from tasks.sources.feed import WarehouseUnreadable
from tasks.sources.parquet import ParquetWarehouse

pytestmark = pytest.mark.fast


def test_parquet_numbers_become_text_for_the_checks(tmp_path):
    path = tmp_path / "n.parquet"
    pl.DataFrame({"code": ["A", "B"], "on_hand": [3, -1]}).write_parquet(path)
    wh = ParquetWarehouse(
        name="north", kind="parquet", path=str(path), sku_column="code", quantity_column="on_hand"
    )
    rows = read_feed(wh).numbered()
    assert rows.select("sku_text", "quantity_text", "line").rows() == [
        ("A", "3", 1),
        ("B", "-1", 2),
    ]


def test_parquet_columns_alike_but_for_case_are_refused(tmp_path):
    path = tmp_path / "n.parquet"
    pl.DataFrame({"code": ["A"], "on_hand": [3], "ON_HAND": [4]}).write_parquet(path)
    wh = ParquetWarehouse(
        name="north", kind="parquet", path=str(path), sku_column="code", quantity_column="on_hand"
    )
    with pytest.raises(
        WarehouseUnreadable, match=r"'on_hand' \(column 2\), 'ON_HAND' \(column 3\)"
    ):
        read_feed(wh)


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "n.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    wh = ParquetWarehouse(
        name="north", kind="parquet", path=str(path), sku_column="c", quantity_column="q"
    )
    with pytest.raises(
        WarehouseUnreadable, match="warehouse 'north': .*not a readable Parquet file"
    ):
        read_feed(wh)
