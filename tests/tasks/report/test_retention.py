"""Report retention: files older than report.keep_days are deleted, newer ones and a user's kept."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from tasks.config.errors import ConfigError
from tasks.config.settings import load_settings
from tasks.report.retention import delete_old_reports

pytestmark = pytest.mark.fast

NOW = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)


def report(folder, age: timedelta, what: str = "quarantine", run: str = "brave-otter"):
    stamp = (NOW - age).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{run}-{what}.csv"
    path.write_text("vendorSku,reason\nX,negative\n", encoding="utf-8")
    return path


def test_reports_past_keep_days_are_deleted_and_newer_ones_kept(tmp_path):
    old = [
        report(tmp_path, timedelta(days=31)),
        report(tmp_path, timedelta(days=400), "not-landed", run="run-7"),
        report(tmp_path, timedelta(days=30, seconds=1), "dry-run-diff"),
    ]
    kept = [
        report(tmp_path, timedelta(days=29, hours=23)),
        report(tmp_path, timedelta(0), "not-landed"),
    ]
    deleted = delete_old_reports(tmp_path, keep_days=30, now=NOW)
    assert sorted(deleted) == sorted(old)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_only_files_named_as_runs_name_them_are_ever_deleted(tmp_path):
    mine = tmp_path / "notes.csv"
    mine.write_text("a user's own file")
    almost = tmp_path / "20200101T000000Z-run-summary.txt"
    almost.write_text("not a report")
    (tmp_path / "20200101T000000Z-run-quarantine.csv").mkdir()  # a folder, not a report
    assert delete_old_reports(tmp_path, keep_days=1, now=NOW) == []
    assert mine.exists() and almost.exists()


def test_a_missing_reports_folder_is_nothing_to_delete(tmp_path):
    assert delete_old_reports(tmp_path / "never-written", keep_days=1, now=NOW) == []


def test_keep_days_can_be_less_than_a_day(tmp_path):
    old = report(tmp_path, timedelta(hours=13))
    new = report(tmp_path, timedelta(hours=11))
    assert delete_old_reports(tmp_path, keep_days=0.5, now=NOW) == [old]
    assert new.exists()


def config(tmp_path, report_section: str):
    path = tmp_path / "sync.toml"
    path.write_text(
        textwrap.dedent(
            """
            [lightspeed]
            base_url = "http://127.0.0.1:1"

            [report]
            {report}

            [[warehouses]]
            name = "east"
            kind = "csv"
            path = "east.csv"
            sku_column = "sku"
            quantity_column = "qty"
            """
        ).format(report=report_section),
        encoding="utf-8",
    )
    return path


def test_keep_days_is_thirty_unless_the_configuration_says_otherwise(tmp_path):
    assert load_settings(config(tmp_path, "")).report.keep_days == 30
    assert load_settings(config(tmp_path, "keep_days = 7")).report.keep_days == 7


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "100000", '"forever"'])
def test_a_keep_days_that_is_not_a_number_of_days_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match="keep_days"):
        load_settings(config(tmp_path, f"keep_days = {value}"))
