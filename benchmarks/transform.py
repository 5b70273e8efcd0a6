"""Benchmark 1: read + check + reconcile + validate, 10 warehouse CSV feeds, beside the floor.

Each size runs the pipeline's stages 1-4 in a fresh child process, and benchmarks/floor.py (plain
polars doing the same arithmetic, no checks) in another, alternating.

python -m benchmarks.transform [--sizes 100000,1000000,5000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import dataset as data
from benchmarks import floor
from benchmarks.machine import load_average
from benchmarks.processes import Measured, last_json, python_module, run_measured

SIZES = (100_000, 1_000_000, 5_000_000)
TARGET_TIME_RATIO = 2.0  # for 1,000,000 products, against the floor
TARGET_MEMORY_RATIO = 2.5
TARGET_PRODUCTS = 1_000_000
LARGEST = 5_000_000  # it must still run; its time is reported
ROUNDS_AT_TARGET = 3  # pipeline and floor alternate; medians are reported
DEFAULT_ROOT = data.DEFAULT_ROOT


def warehouses(dataset: data.Dataset) -> list[Any]:
    """The ten warehouses as the pipeline's own settings objects."""
    from tasks.sources.csv import CsvWarehouse

    return [
        CsvWarehouse(
            kind="csv",
            name=name,
            path=str(path),
            sku_column="sku",
            quantity_column="qty",
            safety_stock=safety,
        )
        for name, path, safety in zip(
            data.warehouse_names(), dataset.feeds, data.SAFETY_STOCK, strict=True
        )
    ]


def run_pipeline(dataset: data.Dataset, payload_out: Path | None = None) -> dict[str, Any]:
    """The flow's stages 1-4 with its own functions; seconds per stage and what came out."""
    import polars as pl

    from tasks.checks.payload import check_payload
    from tasks.checks.rows import check_rows
    from tasks.lightspeed.catalog import catalog_from_csv
    from tasks.lightspeed.contract import MAX_QUANTITY
    from tasks.reconcile import reconcile_checked
    from tasks.sources.csv import read_csv_feed

    settings = warehouses(dataset)
    seconds: dict[str, float] = {}
    peak_gb: dict[str, float] = {}

    def peak(stage: str) -> None:
        peak_gb[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    peak("imports")
    started, cpu_started = time.perf_counter(), time.process_time()

    def timed_catalog() -> pl.DataFrame:
        begun = time.perf_counter()
        frame = catalog_from_csv(str(dataset.catalog_csv))
        seconds["catalog (alongside the feeds)"] = time.perf_counter() - begun
        return frame

    # As in the flow: the catalog and every warehouse are read concurrently, 8 threads.
    with ThreadPoolExecutor(max_workers=8) as pool:
        catalog_future = pool.submit(timed_catalog)
        feeds = list(pool.map(read_csv_feed, settings))
        seconds["read feeds"] = time.perf_counter() - started
        catalog = catalog_future.result()
    seconds["read (feeds and catalog)"] = time.perf_counter() - started
    peak("read (feeds and catalog)")
    mark = time.perf_counter()
    checked = check_rows(feeds, catalog)
    seconds["check rows (polars + GX)"] = time.perf_counter() - mark
    peak("check rows (polars + GX)")
    mark = time.perf_counter()
    safety = {w.name: w.safety_stock for w in settings}
    plan = reconcile_checked(checked, catalog, safety, "zero", MAX_QUANTITY)
    payload = plan.payload
    seconds["reconcile"] = time.perf_counter() - mark
    peak("reconcile")
    mark = time.perf_counter()
    check_payload(payload, catalog)
    seconds["check payload (GX)"] = time.perf_counter() - mark
    peak("check payload (GX)")
    total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if payload_out is not None:
        payload.write_parquet(payload_out)
    return {
        "seconds": total,
        "cpu_seconds": cpu,
        "stages": seconds,
        "peak_gb_after": peak_gb,
        "rows": sum(feed.rows.height for feed in feeds),
        "products": catalog.height,
        "payload": payload.height,
        "flagged": dict(checked.flagged.group_by("reason").len().sort("reason").iter_rows()),
        "statuses": {k: v for k, v in plan.counts().items() if v},
    }


@dataclass
class SizeResult:
    products: int
    rows: int
    feed_mb: float
    child: Measured
    figures: dict[str, Any]
    load: str
    floor: Measured | None = None
    floor_figures: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return float(self.figures["seconds"])

    @property
    def floor_seconds(self) -> float | None:
        return float(self.floor_figures["seconds"]) if self.floor_figures else None

    @property
    def time_ratio(self) -> float | None:
        return self.seconds / self.floor_seconds if self.floor_seconds else None

    @property
    def memory_ratio(self) -> float | None:
        return self.child.peak_rss_gb / self.floor.peak_rss_gb if self.floor else None


@dataclass
class TransformResult:
    sizes: list[SizeResult] = field(default_factory=list)

    def at(self, products: int) -> SizeResult | None:
        return next((s for s in self.sizes if s.products == products), None)

    def targets(self) -> list[tuple[str, str, bool]]:
        """(target, measured, met) for the 1M-product size and the largest, if they were run."""
        out = []
        one = self.at(TARGET_PRODUCTS)
        if one is not None and one.floor is not None and one.floor_seconds:
            time_ratio, memory_ratio = one.time_ratio or 0.0, one.memory_ratio or 0.0
            out += [
                (
                    f"transform of 1M products ≤ {TARGET_TIME_RATIO:g}x the plain-polars floor's time",
                    f"{one.seconds:.1f} s vs {one.floor_seconds:.1f} s ({time_ratio:.2f}x)",
                    time_ratio <= TARGET_TIME_RATIO,
                ),
                (
                    f"transform of 1M products ≤ {TARGET_MEMORY_RATIO:g}x the floor's peak memory",
                    f"{one.child.peak_rss_gb:.2f} GB vs {one.floor.peak_rss_gb:.2f} GB "
                    f"({memory_ratio:.2f}x)",
                    memory_ratio <= TARGET_MEMORY_RATIO,
                ),
            ]
        largest = self.at(LARGEST)
        if largest is not None:
            out.append(
                (
                    "transform of 5M products runs (its time reported)",
                    f"{largest.seconds:.1f} s, {largest.child.peak_rss_gb:.2f} GB",
                    largest.child.returncode == 0,
                )
            )
        return out

    def lines(self) -> list[str]:
        out = []
        for size in self.sizes:
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in size.figures["stages"].items())
            floor_part = (
                f"; floor {size.floor_seconds:.1f} s, {size.floor.peak_rss_gb:.2f} GB "
                f"({size.time_ratio:.2f}x, {size.memory_ratio:.2f}x)"
                if size.floor is not None and size.floor_seconds
                else ""
            )
            out.append(
                f"{size.products:>9,} products, {size.rows:>10,} rows ({size.feed_mb:,.0f} MB): "
                f"{size.seconds:6.1f} s, peak {size.child.peak_rss_gb:.2f} GB{floor_part} "
                f"[load {size.load}] ({stages})"
            )
        return out


def _pipeline_child(dataset: data.Dataset, payload: Path) -> tuple[Measured, dict[str, Any]]:
    from flows.allocator import JEMALLOC_CONF, JEMALLOC_ENV

    # A run's process sets jemalloc's variable before polars loads (flows/allocator.py); this
    # child imports polars with the data set first, so it is given it from the start.
    child = run_measured(
        python_module(
            "benchmarks.transform",
            "--worker",
            str(dataset.folder),
            str(dataset.products),
            "--payload-out",
            str(payload),
        ),
        env={JEMALLOC_ENV: JEMALLOC_CONF},
    )
    if child.returncode != 0:
        raise RuntimeError(
            f"transform of {dataset.products} products failed:\n{child.output[-3000:]}"
        )
    return child, last_json(child.output) | {"payload_file": str(payload)}


def _median_run(
    runs: list[tuple[Measured, dict[str, Any]]],
) -> tuple[Measured, dict[str, Any]]:
    """The run of median time (its own peak memory goes with it)."""
    ordered = sorted(runs, key=lambda run: float(run[1]["seconds"]))
    return ordered[len(ordered) // 2]


def measure_size(root: Path, products: int, with_floor: bool = True) -> SizeResult:
    """Generate (or reuse) the data set; run the floor and the pipeline in fresh children."""
    dataset = data.generate(root / f"products-{products}", products)
    payload = dataset.folder / "pipeline-payload.parquet"
    rounds = ROUNDS_AT_TARGET if products == TARGET_PRODUCTS else 1
    pipeline_runs, floor_runs = [], []
    for _ in range(rounds):
        if with_floor:
            floor_runs.append(floor.measure_size(dataset))
        pipeline_runs.append(_pipeline_child(dataset, payload))
    child, figures = _median_run(pipeline_runs)
    result = SizeResult(
        products, dataset.rows, dataset.feed_bytes() / 1e6, child, figures, load_average()
    )
    if floor_runs:
        result.floor, result.floor_figures = _median_run(floor_runs)
    return result


def measure(root: Path, sizes: tuple[int, ...] = SIZES) -> TransformResult:
    result = TransformResult()
    for products in sizes:
        result.sizes.append(measure_size(root, products))
        print(result.lines()[-1], flush=True)
    return result


def worker(folder: Path, products: int, payload_out: Path | None) -> None:
    """In the child: import the libraries first (not part of the transform), then run it."""
    import great_expectations  # noqa: F401
    import prefect  # noqa: F401

    dataset = data.generate(folder, products)
    print(json.dumps(run_pipeline(dataset, payload_out)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--worker", nargs=2, metavar=("FOLDER", "PRODUCTS"))
    parser.add_argument("--payload-out", type=Path)
    args = parser.parse_args(argv)
    if args.worker:
        worker(Path(args.worker[0]), int(args.worker[1]), args.payload_out)
        return
    result = measure(args.root, tuple(int(s) for s in args.sizes.split(",")))
    for target, figure, met in result.targets():
        print(f"{'MET ' if met else 'MISSED'} {target}: {figure}")


if __name__ == "__main__":
    main(sys.argv[1:])
