"""Benchmark 2: the same rules written the obvious way in pandas, on the same data, vs the pipeline.

Usage: python -m benchmarks.pandas_reference [--products 1000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import dataset as data
from benchmarks.machine import load_average
from benchmarks.processes import Measured, last_json, python_module, run_measured
from benchmarks.transform import DEFAULT_ROOT

PRODUCTS = 1_000_000
TARGET_RATIO = 5.0
INTEGER_TEXT = r"^[+-]?[0-9]+(\.0+)?$"
MAX_QUANTITY = 2_147_483_647


def reconcile_in_pandas(dataset: data.Dataset) -> tuple[Any, dict[str, int]]:
    """Read, flag and reconcile with pandas: (payload id/vendorSku/quantity, rows per reason)."""
    import numpy as np
    import pandas as pd

    catalog = pd.read_csv(dataset.catalog_csv, dtype=str, keep_default_na=False)
    catalog["vendorSku"] = catalog["vendorSku"].str.strip().replace("", None)
    flag = catalog["isInventoryTrackingEnabled"].str.strip().str.strip("[]").str.lower()
    catalog["tracked"] = flag.isin(["true", "1"])
    frames = []
    for name, path in zip(data.warehouse_names(), dataset.feeds, strict=True):
        feed = pd.read_csv(path, dtype=str, keep_default_na=False)
        frames.append(pd.DataFrame({"warehouse": name, "sku": feed["sku"], "qty": feed["qty"]}))
    rows = pd.concat(frames, ignore_index=True)

    rows["sku"] = rows["sku"].str.strip()
    text = rows["qty"].str.strip()
    empty_sku = rows["sku"] == ""
    missing = text == ""
    is_integer = text.str.match(INTEGER_TEXT) & ~missing
    digits = text.str.replace(r"\.0+$", "", regex=True).str.removeprefix("+")
    number = pd.to_numeric(digits.where(is_integer), errors="coerce")
    out_of_range = is_integer & (number.abs() > MAX_QUANTITY)
    unknown = ~empty_sku & ~rows["sku"].isin(set(catalog["vendorSku"].dropna()))
    hold = missing | (~missing & ~is_integer) | out_of_range
    masks = {
        "empty SKU": empty_sku,
        "missing quantity": missing,
        "quantity is not an integer": ~missing & ~is_integer,
        "quantity out of range": out_of_range,
        "negative quantity": number < 0,
        "unknown SKU": unknown,
    }
    quarantine = pd.concat(  # the report's rows, as the pipeline lists them
        [rows.loc[mask, ["warehouse", "sku", "qty"]].assign(reason=r) for r, mask in masks.items()]
    )
    flagged = quarantine["reason"].value_counts().to_dict()
    held_skus = set(rows.loc[hold & ~empty_sku, "sku"])

    good = rows[~(empty_sku | unknown | hold)].copy()
    good["quantity"] = number[good.index].astype("int64")
    per_warehouse = good.groupby(["warehouse", "sku"], as_index=False)["quantity"].sum()
    safety = dict(zip(data.warehouse_names(), data.SAFETY_STOCK, strict=True))
    reserve = per_warehouse["warehouse"].map(safety).fillna(0)
    per_warehouse["available"] = (per_warehouse["quantity"] - reserve).clip(lower=0)
    stock = per_warehouse.groupby("sku")["available"].sum()

    products = catalog[["id", "vendorSku", "tracked"]].copy()
    products["available"] = products["vendorSku"].map(stock)
    ambiguous = products["vendorSku"].notna() & products["vendorSku"].duplicated(keep=False)
    listed = products["available"].notna()
    sent_from_stock = (
        ~ambiguous
        & products["tracked"]
        & products["vendorSku"].notna()
        & ~products["vendorSku"].isin(held_skus)
        & ~(listed & (products["available"] > MAX_QUANTITY))
    )
    products["quantity"] = np.where(listed, products["available"], 0)
    payload = products.loc[sent_from_stock, ["id", "vendorSku", "quantity"]]
    payload["quantity"] = payload["quantity"].astype("int64")
    return payload.sort_values(["vendorSku", "id"]), {str(k): int(v) for k, v in flagged.items()}


@dataclass
class ReferenceResult:
    products: int
    rows: int
    pipeline: Measured
    pipeline_figures: dict[str, Any]
    pandas: Measured
    pandas_figures: dict[str, Any]
    same_output: bool
    load: str

    @property
    def ratio(self) -> float:
        return float(self.pandas_figures["seconds"]) / float(self.pipeline_figures["seconds"])

    def targets(self) -> list[tuple[str, str, bool]]:
        return [
            (
                f"at least {TARGET_RATIO:.0f}x faster than the pandas reference",
                f"{self.ratio:.1f}x",
                self.ratio >= TARGET_RATIO and self.same_output,
            )
        ]

    def lines(self) -> list[str]:
        return [
            f"{self.products:,} products, {self.rows:,} rows [load {self.load}]",
            f"  pipeline (polars + GX): {self.pipeline_figures['seconds']:6.1f} s, "
            f"peak {self.pipeline.peak_rss_gb:.2f} GB",
            f"  pandas reference:       {self.pandas_figures['seconds']:6.1f} s, "
            f"peak {self.pandas.peak_rss_gb:.2f} GB",
            f"  pandas / pipeline: {self.ratio:.1f}x; same payload and flag counts: "
            f"{'yes' if self.same_output else 'NO'}",
        ]


def same_output(
    pipeline: Path, reference: Path, pipeline_flags: dict[str, int], ref: dict[str, int]
) -> bool:
    """Whether both sent the same quantity to the same products and flagged the same rows."""
    import polars as pl

    left = pl.read_parquet(pipeline).select("id", "quantity").sort("id")
    right = pl.read_parquet(reference).select("id", "quantity").sort("id")
    return left.equals(right) and pipeline_flags == ref


def measure(
    root: Path, products: int = PRODUCTS, pipeline: tuple[Measured, dict[str, Any]] | None = None
) -> ReferenceResult:
    """Run the pandas reference in a child; the pipeline too, unless its run is handed in."""
    dataset = data.generate(root / f"products-{products}", products)
    with tempfile.TemporaryDirectory() as scratch:
        ours, theirs = Path(scratch) / "pipeline.parquet", Path(scratch) / "pandas.parquet"
        if pipeline is None or not Path(pipeline[1].get("payload_file", "")).exists():
            child = run_measured(
                python_module(
                    "benchmarks.transform",
                    "--worker",
                    str(dataset.folder),
                    str(products),
                    "--payload-out",
                    str(ours),
                )
            )
            pipeline = (child, last_json(child.output))
        else:
            ours = Path(pipeline[1]["payload_file"])
        reference = run_measured(
            python_module(
                "benchmarks.pandas_reference",
                "--worker",
                str(dataset.folder),
                str(products),
                str(theirs),
            )
        )
        if reference.returncode != 0:
            raise RuntimeError(f"pandas reference failed:\n{reference.output[-3000:]}")
        figures = last_json(reference.output)
        same = same_output(ours, theirs, pipeline[1]["flagged"], figures["flagged"])
    return ReferenceResult(
        products, dataset.rows, pipeline[0], pipeline[1], reference, figures, same, load_average()
    )


def worker(folder: Path, products: int, payload_out: Path) -> None:
    import pandas  # noqa: F401

    dataset = data.generate(folder, products)
    started = time.perf_counter()
    payload, flagged = reconcile_in_pandas(dataset)
    seconds = time.perf_counter() - started
    payload.to_parquet(payload_out)
    print(json.dumps({"seconds": seconds, "flagged": flagged, "payload": len(payload)}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=PRODUCTS)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--worker", nargs=3, metavar=("FOLDER", "PRODUCTS", "PAYLOAD_OUT"))
    args = parser.parse_args(argv)
    if args.worker:
        worker(Path(args.worker[0]), int(args.worker[1]), Path(args.worker[2]))
        return
    result = measure(args.root, args.products)
    print("\n".join(result.lines()))
    for target, figure, met in result.targets():
        print(f"{'MET' if met else 'MISSED'} {target}: {figure}")


if __name__ == "__main__":
    main(sys.argv[1:])
