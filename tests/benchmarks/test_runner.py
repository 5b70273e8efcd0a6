"""The benchmarks at tiny sizes, so they cannot rot: they run end to end and agree with themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import dataset as data  # the repo root is on pytest's pythonpath
from benchmarks.runner import SMOKE, draw_plots, render, run_all

pytestmark = pytest.mark.slow


def test_dataset_has_bins_bad_rows_and_changes_exactly_the_share_asked(tmp_path: Path) -> None:
    dataset = data.generate(tmp_path / "d", 5_000)
    assert [p.exists() for p in dataset.feeds] == [True] * data.WAREHOUSES
    assert dataset.rows > 5_000 * 5  # about 9 rows per product
    assert data.generate(tmp_path / "d", 5_000) == dataset  # reused, not made again
    assert data.change_quantities(dataset, 0.02) == 100


def test_all_five_run_and_write_the_doc(tmp_path: Path, prefect_api: str) -> None:
    results = run_all(tmp_path / "data", SMOKE, "smoke", api=prefect_api)

    assert results.transform is not None and results.transform.sizes[0].rows > 0
    assert results.transform.sizes[0].floor_seconds is not None  # the floor ran beside it
    assert results.reference is not None and results.reference.same_output
    assert results.load is not None
    assert {t["kind"] for t in results.load.trials} == {"bare", "prefect", "pipeline"}
    assert results.load.task_runs() == results.load.chunks > 0  # counted on the server
    assert results.cycle is not None and results.cycle.full_sync is not None
    [change] = results.cycle.runs
    assert change.child.returncode == 0 and change.sent == change.changed > 0
    assert change.requests.get("PUT /inventory", 0) >= 1 and change.bytes_in > 0
    assert [name for name, _ in change.stages][:2] == [
        "start-up: imports, config, flow run",
        "extract and catalog",
    ]
    assert abs(sum(seconds for _, seconds in change.stages) - change.seconds) < 0.01

    assert results.arrival is not None
    [arrived] = results.arrival.sizes
    assert len(arrived.seconds) == 1 and arrived.seconds[0] > 0

    images = draw_plots(results, tmp_path / "docs")
    assert sorted(images) == ["cycle", "load", "transform"]
    assert all((tmp_path / "docs" / name).stat().st_size > 1000 for name in images.values())
    doc = render(results, images)
    headings = ("## Targets", "## 1. Transform", "## 2.", "## 3. Load", "## 4. The 15", "## 5.")
    for heading in headings:
        assert heading in doc
    assert all(f"]({name})" in doc for name in images.values())
    # reference, load (time, task runs), and the cycle's time, GETs and refresh; the
    # transform's are for 1M and 5M products only
    assert len(results.targets()) == 6
    assert all(target in doc for target, _, _ in results.targets())
