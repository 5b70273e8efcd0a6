"""Synthetic supplier data: a catalog and ten warehouse CSV feeds with bins and a few bad rows."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

WAREHOUSES = 10
STOCK_SHARE = 0.3  # chance that a warehouse stocks a given product: about 3 of the 10
MAX_BINS = 5  # 1..5 rows (bins) per product per warehouse that stocks it: about 3
SAFETY_STOCK = (0, 2, 0, 1, 3, 0, 0, 2, 0, 5)
UNTRACKED_SHARE = 0.01
AMBIGUOUS_EVERY = 50_000  # one vendorSku carried by two catalog products per this many
NO_SKU_EVERY = 100_000  # one tracked product without a vendorSku per this many
BAD_ROW_SHARE = 0.0001  # of rows, for each kind of bad row (empty SKU, unknown SKU, "abc", ...)
FORMAT = 2  # bump when the files change shape, so cached data sets are made again
DEFAULT_ROOT = Path("/tmp/inventory-sync-bench")  # where data sets are generated and kept


@dataclass(frozen=True)
class Dataset:
    """Where a generated data set lives and what it holds."""

    folder: Path
    products: int
    rows: int
    seed: int

    @property
    def catalog_csv(self) -> Path:
        return self.folder / "catalog.csv"

    @property
    def catalog_json(self) -> Path:
        """The sandbox's catalog file, written from catalog.csv the first time it is asked for."""
        path = self.folder / "catalog.json"
        if not path.exists():
            catalog = pl.read_csv(self.catalog_csv, infer_schema=False).select(
                "id",
                "vendorSku",
                pl.format("Product {}", pl.int_range(pl.len())).alias("name"),
                (pl.col("isInventoryTrackingEnabled") == "true").alias("tracked"),
                (pl.col("isBackorderingEnabled") == "true").alias("backorder"),
            )
            write_catalog_json(catalog, path)
        return path

    @property
    def feeds(self) -> list[Path]:
        return [self.folder / "feeds" / f"{name}.csv" for name in warehouse_names()]

    def feed_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.feeds)


def warehouse_names() -> list[str]:
    return [f"wh-{n:02d}" for n in range(WAREHOUSES)]


def generate(folder: Path, products: int, seed: int = 1) -> Dataset:
    """Write catalog.csv and feeds/wh-00.csv … wh-09.csv, unless already there."""
    manifest = folder / "manifest.json"
    wanted = {"products": products, "seed": seed, "format": FORMAT}
    if manifest.exists():
        found = json.loads(manifest.read_text())
        if {key: found.get(key) for key in wanted} == wanted:
            return Dataset(folder, products, int(found["rows"]), seed)
    manifest.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    (folder / "feeds").mkdir(parents=True, exist_ok=True)
    catalog = catalog_frame(products, rng)
    catalog.select(
        "vendorSku",
        "id",
        pl.col("tracked").alias("isInventoryTrackingEnabled"),
        pl.col("backorder").alias("isBackorderingEnabled"),
    ).write_csv(folder / "catalog.csv")
    rows = 0
    for name in warehouse_names():
        feed = feed_frame(catalog["vendorSku"], rng)
        feed.write_csv(folder / "feeds" / f"{name}.csv")
        rows += feed.height
    manifest.write_text(json.dumps({**wanted, "rows": rows}))
    return Dataset(folder, products, rows, seed)


def uuid_strings(count: int, rng: np.random.Generator) -> pl.Series:
    """Random UUID-shaped strings, built as one ASCII buffer rather than in a Python loop."""
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nibbles = rng.integers(0, 16, size=(count, 32), dtype=np.uint8)
    text = np.full((count, 37), ord("-"), dtype=np.uint8)
    for start, stop, at in ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24)):
        text[:, at : at + stop - start] = digits[nibbles[:, start:stop]]
    text[:, 36] = ord("\n")
    frame = pl.read_csv(io.BytesIO(text.tobytes()), has_header=False, new_columns=["id"])
    return frame["id"]


def catalog_frame(products: int, rng: np.random.Generator) -> pl.DataFrame:
    """id, vendorSku, name, tracked, backorder: a few ambiguous SKUs, untracked products, no-SKU."""
    number = pl.int_range(products, dtype=pl.Int64)
    sku = pl.format("SKU-{}", number.cast(pl.String).str.zfill(7))
    previous = pl.format("SKU-{}", (number - 1).cast(pl.String).str.zfill(7))
    return pl.DataFrame({"id": uuid_strings(products, rng)}).select(
        "id",
        pl.when(number % NO_SKU_EVERY == NO_SKU_EVERY - 1)
        .then(None)
        .when(number % AMBIGUOUS_EVERY == 1)
        .then(previous)
        .otherwise(sku)
        .alias("vendorSku"),
        pl.format("Product {}", number).alias("name"),
        pl.Series(rng.random(products) >= UNTRACKED_SHARE).alias("tracked"),
        pl.Series(rng.random(products) < 0.1).alias("backorder"),
    )


def write_catalog_json(catalog: pl.DataFrame, path: Path) -> None:
    """The sandbox's catalog file: {"products": [GET /products items]}."""
    items = catalog.select(
        "id",
        "vendorSku",
        "name",
        pl.struct(
            pl.col("tracked").alias("isInventoryTrackingEnabled"),
            pl.col("backorder").alias("isBackorderingEnabled"),
        ).alias("inventory"),
        pl.lit(0).alias("quantity"),
    )
    buffer = io.BytesIO()
    items.write_json(buffer)
    with open(path, "wb") as handle:
        handle.write(b'{"products":')
        handle.write(buffer.getvalue())
        handle.write(b"}")


def feed_frame(catalog_skus: pl.Series, rng: np.random.Generator) -> pl.DataFrame:
    """One warehouse export: sku, bin, qty, in bin order; mostly clean, a few rows bad on purpose."""
    stocked = np.flatnonzero(rng.random(catalog_skus.len()) < STOCK_SHARE)
    bins = rng.integers(1, MAX_BINS + 1, size=stocked.size)
    product = np.repeat(stocked, bins)
    rows = product.size
    quantity = rng.integers(0, 60, size=rows)
    style = rng.random(rows)
    frame = (
        pl.DataFrame(
            {
                "sku": catalog_skus.gather(product),
                "aisle": rng.integers(1, 40, size=rows),
                "shelf": rng.integers(1, 30, size=rows),
                "quantity": quantity,
                "style": style,
            }
        )
        .filter(pl.col("sku").is_not_null())
        .sort("aisle", "shelf", maintain_order=True)
    )
    text = pl.col("quantity").cast(pl.String)
    bad = pl.col("style")
    share = BAD_ROW_SHARE
    frame = frame.select(
        pl.when(bad < share)
        .then(pl.lit(""))
        .when(bad < 2 * share)
        .then(pl.lit("UNKNOWN-") + pl.col("sku"))
        .otherwise(pl.col("sku"))
        .alias("sku"),
        pl.format("A{}-{}", pl.col("aisle"), pl.col("shelf")).alias("bin"),
        pl.when(bad.is_between(2 * share, 3 * share, closed="left"))
        .then(pl.lit("abc"))
        .when(bad.is_between(3 * share, 4 * share, closed="left"))
        .then(pl.lit("3.5"))
        .when(bad.is_between(4 * share, 5 * share, closed="left"))
        .then(pl.lit("-2"))
        .when(bad > 0.99)
        .then(text + ".0")
        .when(bad > 0.985)
        .then(pl.lit(" ") + text + " ")
        .otherwise(text)
        .alias("qty"),
    )
    return frame  # in bin order, as a warehouse system exports it


def change_quantities(dataset: Dataset, share: float, seed: int = 2) -> int:
    """Raise one clean bin of `share` of the products by 10..59 units; rewrite the feeds.

    Returns how many products were changed; they are all tracked, unambiguous and stocked, so
    each one's pushed quantity changes (the raise exceeds every safety stock).
    """
    rng = np.random.default_rng(seed)
    catalog = pl.read_csv(dataset.catalog_csv, infer_schema=False)
    clean = catalog.filter(
        (pl.col("isInventoryTrackingEnabled") == "true")
        & pl.col("vendorSku").is_not_null()
        & ~pl.col("vendorSku").is_duplicated()
    )["vendorSku"]
    feeds = [pl.read_csv(path, infer_schema=False) for path in dataset.feeds]
    rows = pl.concat(
        [f.with_row_index("row").with_columns(pl.lit(n).alias("feed")) for n, f in enumerate(feeds)]
    )
    bad_skus = rows.filter(~pl.col("qty").str.contains(r"^[0-9]+$"))["sku"].unique()
    candidates = (
        rows.filter(pl.col("qty").str.contains(r"^[0-9]+$"))
        .filter(pl.col("sku").is_in(clean.implode()) & ~pl.col("sku").is_in(bad_skus.implode()))
        .group_by("sku", maintain_order=True)
        .first()
    )
    count = min(round(dataset.products * share), candidates.height)
    picked = candidates.sample(count, seed=int(rng.integers(0, 2**31)), shuffle=False)
    picked = picked.with_columns(pl.Series("raise", rng.integers(10, 60, size=count)))
    for number, feed in enumerate(feeds):
        mine = picked.filter(pl.col("feed") == number).select("row", "raise")
        if mine.height == 0:
            continue
        feed.with_row_index("row").join(mine, on="row", how="left").select(
            "sku",
            "bin",
            pl.when(pl.col("raise").is_not_null())
            .then((pl.col("qty").cast(pl.Int64) + pl.col("raise")).cast(pl.String))
            .otherwise(pl.col("qty"))
            .alias("qty"),
        ).write_csv(dataset.feeds[number])
    return count
