"""Benchmark 1: read + check + reconcile + validate, 10 warehouse CSV feeds, in a child process.

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
from benchmarks.machine import load_average
from benchmarks.processes import Measured, last_json, python_module, run_measured

SIZES = (100_000, 1_000_000, 5_000_000)
TARGET_SECONDS = 15.0  # for 1,000,000 products
TARGET_PEAK_GB = 2.5
TARGET_PRODUCTS = 1_000_000
DEFAULT_ROOT = data.DEFAULT_ROOT


def warehouses(dataset: data.Dataset) -> list[Any]:
    """The ten warehouses as the pipeline's own settings objects."""
    from tasks.sources.csv_file import CsvWarehouse

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
    from tasks.reconcile import reconcile_checked
    from tasks.sources.csv_file import read_csv_feed

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
    plan = reconcile_checked(checked, catalog, safety, "zero")
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

    @property
    def seconds(self) -> float:
        return float(self.figures["seconds"])


@dataclass
class TransformResult:
    sizes: list[SizeResult] = field(default_factory=list)

    def at(self, products: int) -> SizeResult | None:
        return next((s for s in self.sizes if s.products == products), None)

    def targets(self) -> list[tuple[str, str, bool]]:
        """(target, measured, met) for the 1M-product size, if it was run."""
        one = self.at(TARGET_PRODUCTS)
        if one is None:
            return []
        return [
            (
                f"transform of 1M products ≤ {TARGET_SECONDS:.0f} s",
                f"{one.seconds:.1f} s",
                one.seconds <= TARGET_SECONDS,
            ),
            (
                f"transform of 1M products ≤ {TARGET_PEAK_GB} GB peak",
                f"{one.child.peak_rss_gb:.2f} GB",
                one.child.peak_rss_gb <= TARGET_PEAK_GB,
            ),
        ]

    def lines(self) -> list[str]:
        out = []
        for size in self.sizes:
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in size.figures["stages"].items())
            out.append(
                f"{size.products:>9,} products, {size.rows:>10,} rows ({size.feed_mb:,.0f} MB): "
                f"{size.seconds:6.1f} s, peak {size.child.peak_rss_gb:.2f} GB "
                f"[load {size.load}] ({stages})"
            )
        return out


def measure_size(root: Path, products: int) -> SizeResult:
    """Generate (or reuse) the data set and run the pipeline on it in a fresh child process."""
    dataset = data.generate(root / f"products-{products}", products)
    payload = dataset.folder / "pipeline-payload.parquet"
    child = run_measured(
        python_module(
            "benchmarks.transform",
            "--worker",
            str(dataset.folder),
            str(products),
            "--payload-out",
            str(payload),
        )
    )
    if child.returncode != 0:
        raise RuntimeError(f"transform of {products} products failed:\n{child.output[-3000:]}")
    figures = last_json(child.output) | {"payload_file": str(payload)}
    return SizeResult(
        products, dataset.rows, dataset.feed_bytes() / 1e6, child, figures, load_average()
    )


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
