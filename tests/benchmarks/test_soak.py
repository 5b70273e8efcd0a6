"""The soak benchmark: its arithmetic on literal samples, its doc section, and a tiny real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import soak
from benchmarks.doc_sections import DocSection
from benchmarks.soak import Sample, SoakResult


def sample(cycle: int, at: float, prefect: int, reports: int, files: int, state: int) -> Sample:
    return Sample(
        cycle=cycle,
        at=at,
        seconds=1.0,
        prefect_bytes=prefect,
        prefect_wal_bytes=0,
        prefect_used_bytes=prefect,
        rows={"flow_run": min(cycle, 10)},
        state_bytes=state,
        wal_bytes=0,
        report_bytes=reports,
        report_files=files,
        flagged=10,
    )


def soaked() -> SoakResult:
    """Ten seconds a window, a cycle a second: everything grows for 11 cycles, then holds."""
    result = SoakResult(products=2_000, window=10.0, seconds=60.0)
    for cycle in range(1, 61):
        kept = min(cycle, 11)
        result.samples.append(sample(cycle, float(cycle), 1_000 * kept, 100 * kept, kept, 50_000))
    return result


@pytest.mark.fast
def test_growth_per_run_is_the_slope_before_retention_acts_and_nothing_after():
    result = soaked()
    assert [s.cycle for s in result.growing()] == list(range(1, 12))  # 10 s after the first
    assert result.steady()[0].cycle == 31 and result.steady()[-1].cycle == 60
    assert result.per_run(result.growing(), "prefect_bytes") == pytest.approx(1_000)
    assert result.per_run(result.steady(), "prefect_bytes") == pytest.approx(0)
    assert result.per_run(result.steady(), "flow_run") == pytest.approx(0)
    assert result.per_run(result.growing()[:2], "prefect_bytes") is None  # too few to say


@pytest.mark.fast
def test_a_year_is_projected_at_the_retention_and_without_it():
    ten_k, one_m = soak.projection(soaked())
    assert ten_k[0] == "10,000" and one_m[0] == "1,000,000"
    assert ten_k[1] == "2.9 MB (2,880 runs)"  # 1 kB a run, 30 days of 96 runs
    assert ten_k[2] == "35.0 MB"  # a year's 35,040 runs
    assert one_m[3] == "25.0 MB"  # 50 kB of state at 2,000 products, times 500
    assert one_m[4] == "144.0 MB (2,880 files)"  # 100 B a run at 2,000 products, times 500


@pytest.mark.fast
def test_the_section_replaces_its_last_version_and_survives_make_bench(tmp_path: Path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nthe five\n", encoding="utf-8")
    text = soak.section(soaked(), "make soak")
    soak.SECTION.write(text, doc)
    soak.SECTION.write(text.replace("make soak", "make soak again"), doc)
    written = doc.read_text(encoding="utf-8")
    assert written.count(soak.SECTION.begin) == 1 and "make soak again" in written
    assert "| Prefect database (files) | 1.0 kB | 1.0 kB | 0.0 kB |" in written
    doc.write_text("# Benchmarks\n\nthe five, again\n", encoding="utf-8")  # as make bench does
    soak.keep_section(written, doc)
    assert "the five, again" in doc.read_text() and "make soak again" in doc.read_text()


@pytest.mark.fast
def test_a_section_of_its_own_is_appended_once(tmp_path: Path):
    doc = tmp_path / "doc.md"
    section = DocSection("<!-- a -->", "<!-- /a -->")
    section.write(section.wrap(["one"]), doc)
    section.write(section.wrap(["two"]), doc)
    assert doc.read_text() == "\n\n<!-- a -->\ntwo\n<!-- /a -->\n"


SHORT_SOAK = """
import dataclasses, json, sys
from pathlib import Path
from benchmarks import soak
result = soak.measure(Path(sys.argv[1]), cycles=3, products=300, window=30.0)
print(json.dumps([dataclasses.asdict(s) for s in result.samples]))
"""


@pytest.mark.slow
def test_a_short_soak_runs_real_cycles_and_every_run_leaves_an_empty_wal(tmp_path: Path):
    """In a process of its own, as make soak runs it: Prefect's event worker is one per process,
    and a test worker's earlier Prefect server would otherwise be where the soak's events go."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    done = subprocess.run(
        [sys.executable, "-c", SHORT_SOAK, str(tmp_path / "data")],
        capture_output=True, text=True, env=environment, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = SoakResult(300, 30.0)
    result.samples = [Sample(**s) for s in json.loads(done.stdout.splitlines()[-1])]
    assert [s.cycle for s in result.samples] == [1, 2, 3]
    assert all(s.wal_bytes == 0 for s in result.samples)
    assert [s.report_files for s in result.samples] == [1, 2, 3]  # kept: younger than 30 s
    assert result.samples[-1].rows["flow_run"] == 3
    assert result.samples[-1].rows["task_run"] >= 3 * soak.CHUNKS
    assert result.samples[-1].prefect_bytes > 0
