"""The README's sample run is what `make demo` prints: checked against a real demo run."""

from __future__ import annotations

import re

import pytest

from devstack import readme_sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def printed() -> str:
    """One real `make demo` (the sandbox, a sync through the CLI's code, the demo's check)."""
    return readme_sample.demo_output()


def check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], output: str
) -> tuple[int, str]:
    monkeypatch.setattr(readme_sample, "demo_output", lambda: output)
    status = readme_sample.main(["--check"])
    return status, capsys.readouterr().out


def test_the_readme_shows_what_make_demo_prints(
    printed: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, said = check(monkeypatch, capsys, printed)
    assert status == 0, said


def test_a_line_the_cli_prints_differently_fails_the_check(
    printed: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = printed.replace("Changed since the last push:", "Changed since the previous push:")
    assert changed != printed
    status, said = check(monkeypatch, capsys, changed)
    assert status == 1
    assert "+Changed since the previous push:" in said
    assert "make readme-sample" in said


def test_another_runs_name_times_durations_and_port_still_match(
    printed: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (name,) = re.findall(r"^inventory-sync run (\S+)", printed, re.MULTILINE)
    other = printed.replace(name, "another-name")
    other = re.sub(r"\d\d:\d\d:\d\d\+00:00", "23:59:59+00:00", other)
    other = re.sub(r"T\d{6}Z", "T235959Z", other)
    other = re.sub(r"\b\d+\.\d\ds\b", "9.99s", other)
    other = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:1", other)
    other = re.sub(r"\d\d:\d\d:\d\d UTC \(in \d+s\)", "23:59:59 UTC (in 299s)", other)
    assert other != printed
    status, said = check(monkeypatch, capsys, other)
    assert status == 0, said
