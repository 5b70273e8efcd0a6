"""The floor: plain polars doing the transform's arithmetic on the same files, with no checks.

Read the ten feeds (SKU and quantity only), parse the quantity, sum bins per warehouse, hold
back safety stock, sum warehouses per SKU, join the catalog: what any polars script must pay,
and what the pipeline is compared with. One lazy query on the streaming engine, aggregating
each feed on its own (cheaper than one group_by over warehouse and SKU), in a fresh process
that imports polars only.

Usage: python -m benchmarks.floor [--products 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import dataset as data
from benchmarks.processes import Measured, last_json, python_module, run_measured


def floor_payload(dataset: data.Dataset) -> Any:
    """id, vendorSku, quantity for every tracked catalog product: the rules' arithmetic only."""
    import polars as pl

    def stock(name: str, path: Path, safety: int) -> pl.LazyFrame:
        return (
            pl.scan_csv(path, infer_schema=False)
            .select(
                pl.col("sku").str.strip_chars(),
                pl.col("qty").str.strip_chars().cast(pl.Int64, strict=False),
            )
            .group_by("sku")
            .agg(pl.col("qty").sum())
            .select("sku", (pl.col("qty") - safety).clip(lower_bound=0).alias("available"))
        )

    feeds = zip(data.warehouse_names(), dataset.feeds, data.SAFETY_STOCK, strict=True)
    available = (
        pl.concat([stock(*feed) for feed in feeds]).group_by("sku").agg(pl.col("available").sum())
    )
    catalog = pl.scan_csv(dataset.catalog_csv, infer_schema=False).select(
        "id", "vendorSku", (pl.col("isInventoryTrackingEnabled") == "true").alias("tracked")
    )
    return (
        catalog.filter("tracked")
        .join(available, left_on="vendorSku", right_on="sku", how="left")
        .select("id", "vendorSku", pl.col("available").fill_null(0).alias("quantity"))
        .collect(engine="streaming")
    )


def worker(folder: Path, products: int) -> None:
    """In the child: polars imported first (not part of the figure), then the query."""
    import polars  # noqa: F401

    dataset = data.generate(folder, products)
    imports_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    started, cpu_started = time.perf_counter(), time.process_time()
    payload = floor_payload(dataset)
    figures = {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "payload": payload.height,
        "imports_gb": imports_gb,
    }
    print(json.dumps(figures))


def measure_size(dataset: data.Dataset) -> tuple[Measured, dict[str, Any]]:
    """The floor on one data set, in a fresh child process: (its process, its figures)."""
    child = run_measured(
        python_module("benchmarks.floor", "--worker", str(dataset.folder), str(dataset.products))
    )
    if child.returncode != 0:
        raise RuntimeError(f"floor of {dataset.products} products failed:\n{child.output[-3000:]}")
    return child, last_json(child.output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=1_000_000)
    parser.add_argument("--root", type=Path, default=data.DEFAULT_ROOT)
    parser.add_argument("--worker", nargs=2, metavar=("FOLDER", "PRODUCTS"))
    args = parser.parse_args(argv)
    if args.worker:
        worker(Path(args.worker[0]), int(args.worker[1]))
        return
    dataset = data.generate(args.root / f"products-{args.products}", args.products)
    child, figures = measure_size(dataset)
    print(
        f"{args.products:,} products: {figures['seconds']:.2f} s ({figures['cpu_seconds']:.2f} s CPU), "
        f"peak {child.peak_rss_gb:.2f} GB (imports {figures['imports_gb']:.2f} GB)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
