"""The text-column shortcuts give exactly what polars' own operations give."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.text_columns import is_duplicated, needs_trimming

pytestmark = pytest.mark.fast

TEXTS = st.one_of(st.none(), st.sampled_from(["A", "B", "a", "", " A", "SKU-1", "ü"]), st.text())


@settings(max_examples=200, deadline=None)
@given(st.lists(TEXTS, max_size=40))
def test_is_duplicated_is_polars_is_duplicated(values):
    series = pl.Series("sku", values, dtype=pl.String)
    got = is_duplicated(series)
    assert got.to_list() == series.is_duplicated().to_list()
    assert got.name == "sku" and got.dtype == pl.Boolean


def test_is_duplicated_on_a_million_distinct_and_a_few_repeated():
    values = pl.Series("id", [f"p-{n}" for n in range(1_000_000)])
    assert not is_duplicated(values).any()
    repeated = values.scatter([10, 999_999], ["p-3", None]).append(pl.Series("id", [None]))
    assert is_duplicated(repeated).arg_true().to_list() == [3, 10, 999_999, 1_000_000]


@settings(max_examples=200, deadline=None)
@given(st.lists(TEXTS, max_size=40))
def test_needs_trimming_is_whether_strip_chars_changes_anything(values):
    series = pl.Series(values, dtype=pl.String)
    assert needs_trimming(series) == (series.str.strip_chars() != series).any()
