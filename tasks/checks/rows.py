"""Parse every warehouse row in polars and flag bad ones with the GX rows suite.

Most rows are plain: a quantity polars reads as an integer in 0..MAX_QUANTITY and a SKU the
catalog knows. Those are summed per SKU straight from the feed, and GX sees only the distinct
values they take. Every other row (a quantity that needs the rules, an empty or unknown SKU)
is parsed with the rules' expressions and validated by GX row by row, so the suite still
names it. If GX ever refuses a value taken as plain, every row is judged the long way.

The catalog row each listed SKU's stock goes to is found here, in the one join that finds
the unknown SKUs, and reconcile sums and places the stock by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.checks.suites import Outcome, validate_distinct
from tasks.lightspeed.contract import MAX_QUANTITY
from tasks.sources.feed import Feed
from tasks.text_columns import needs_trimming

SUITE = "warehouse_rows"
CATALOG_ROW = "catalog_row"  # which catalog row a SKU adds its stock to
INTEGER_TEXT = r"^[+-]?[0-9]+(\.0+)?$"
DROPPING_ACTIONS = ("quarantine", "hold")
FLAG_SCHEMA = {"row_id": pl.UInt32, "reason": pl.String, "action": pl.String}
FLAGGED_COLUMNS = (
    "row_id", "warehouse", "source", "line", "sku_text", "quantity_text", "reason", "action"
)  # fmt: skip
# polars reads "[+-]?[0-9]+" as an integer and nothing else: a subset of INTEGER_TEXT, with
# the same value, so a row it reads within range needs none of the rules' parsing
PLAIN_QUANTITY = pl.col("quantity_text").cast(pl.Int64, strict=False)
IS_PLAIN = PLAIN_QUANTITY.is_between(0, MAX_QUANTITY).fill_null(False)


@dataclass(frozen=True)
class CheckedRows:
    """What counts (summed per warehouse and SKU), the rows that were flagged, SKUs held back."""

    # warehouse (Enum), sku, quantity: the bins of the rows that count, summed; catalog_row:
    # a row of the catalog the check was given whose vendorSku is that SKU (null: unknown SKU).
    # Lazy, over frames in memory: reconcile streams it into its sums without a copy.
    stock: pl.LazyFrame
    totals: int  # how many rows stock has: warehouse-SKU totals
    flagged: pl.DataFrame  # one row per (row, reason): where it came from, what it said, why
    held_skus: pl.Series  # SKUs with at least one unusable quantity: nothing pushed for them
    skus: dict[str, int]  # warehouse -> distinct SKUs its feed lists

    @cached_property
    def on_hand(self) -> pl.DataFrame:
        """The stock, collected: to look at it (reconcile never does)."""
        return self.stock.collect()


@dataclass(frozen=True)
class FeedScan:
    """One pass over a feed: plain rows summed per SKU text; the rest kept for the rules."""

    feed: Feed
    offset: int  # the run-wide row_id of the feed's first row
    keys: pl.DataFrame  # sku_text, quantity (its plain rows'), rows (all): every text once
    others: pl.DataFrame  # index, sku_text, quantity_text: the rows that are not plain
    plain_values: pl.Series  # the distinct quantities of its plain rows
    shortcut: bool  # False: no row was taken as plain, all are in `others`
    trimmed: bool  # some SKU text has whitespace to trim (then two texts can be one SKU)

    @property
    def plain(self) -> pl.Expr:
        """Whether a row (from its quantity_text) was summed as plain."""
        return IS_PLAIN & self.shortcut

    @property
    def sku(self) -> pl.Expr:
        """The SKU a text stands for: trimmed, and null where nothing is left."""
        text = pl.col("sku_text")
        if self.trimmed:
            text = text.str.strip_chars()
        return pl.when(text != "").then(text).alias("sku")


def parse_rows(rows: pl.DataFrame, sku_known: pl.Expr) -> pl.DataFrame:
    """Add the columns the suite checks: trimmed SKU, parsed quantity, one flag per rule.

    `sku_known` says, from the column "sku", whether the catalog has that SKU.
    The suite sees only null-free flags and the number, never the text: GX converts what it
    checks to pandas and hashes it, which is slow for a million strings. Each flag is
    true where its rule does not apply, so a row fails exactly the rules it breaks.
    """
    sku = pl.col("sku_text").str.strip_chars()
    text = pl.col("quantity_text").str.strip_chars()
    digits = pl.col("digits")
    return (
        rows.with_columns(
            pl.when(sku != "").then(sku).alias("sku"),
            pl.when(text != "").then(text).alias("quantity_trimmed"),
        )
        .with_columns(
            pl.col("sku").is_not_null().alias("sku_is_present"),
            pl.col("quantity_trimmed").is_not_null().alias("quantity_is_present"),
            pl.col("quantity_trimmed").str.contains(INTEGER_TEXT).alias("quantity_is_integer"),
        )
        .with_columns(
            pl.when(pl.col("quantity_is_integer"))
            .then(pl.col("quantity_trimmed").str.replace(r"\.0+$", "").str.strip_prefix("+"))
            .alias("digits")
        )
        .with_columns(digits.cast(pl.Float64, strict=False).alias("quantity_number"))
        .with_columns(
            pl.when(pl.col("quantity_number").abs() <= MAX_QUANTITY)
            .then(digits.cast(pl.Int64, strict=False))
            .alias("quantity"),
            # a missing quantity or SKU is its own rule's, not these two's
            pl.col("quantity_is_integer").fill_null(True),
            sku_known.fill_null(True).alias("sku_in_catalog"),
        )
        .drop("quantity_trimmed", "digits")
    )


def scan_feed(feed: Feed, offset: int, shortcut: bool = True) -> FeedScan:
    """Sum the plain rows per SKU text in one pass; keep the others (all, without the shortcut)."""
    plain = IS_PLAIN & shortcut
    # the three outputs share one plan over the rows, which the engine runs once: the text
    # parsed once per row, not once per output
    rows = (
        feed.rows.lazy()
        .with_row_index("index")
        .with_columns(pl.when(plain).then(PLAIN_QUANTITY).alias("quantity"))  # null: not plain
    )
    # the plain quantity as a column of its own, summed by the streaming engine: less
    # CPU than the same sum written inside agg() on the in-memory engine
    keys, others, values = pl.collect_all(
        [
            rows.group_by("sku_text").agg(
                pl.col("quantity").sum(), pl.len().cast(pl.Int64).alias("rows")
            ),
            rows.filter(pl.col("quantity").is_null() | pl.col("sku_text").is_null()).select(
                "index", "sku_text", "quantity_text"
            ),
            rows.select(pl.col("quantity").drop_nulls().unique()),
        ],
        engine="streaming",
    )
    keys = keys.rechunk()  # the streaming engine's output comes in a few chunks
    trimmed = needs_trimming(keys["sku_text"])
    return FeedScan(feed, offset, keys, others, values["quantity"], shortcut, trimmed)


def _listed(scans: Sequence[FeedScan], catalog: pl.DataFrame, warehouses: pl.Enum) -> pl.DataFrame:
    """Every feed's SKU texts, stacked: the scan's keys, with warehouse, sku, mixed, catalog_row.

    "mixed" says some of the text's rows are not plain. "sku" is the text trimmed, where a
    feed needs it; it can be "" or null where the text stands for no SKU, and catalog_row is
    null there and for every SKU the catalog lacks. catalog_row is a row of the catalog
    whose vendorSku is the SKU (any one, if several).
    One join of the feeds' texts with the catalog finds both the unknown SKUs and the rows
    their stock goes to; it returns row numbers only, so no text is copied, and reconcile
    sums and places the stock by those numbers instead of keying a million texts twice more.
    """
    keys = [
        scan.keys.select(
            pl.lit(scan.feed.warehouse, pl.String).cast(warehouses).alias("warehouse"),
            pl.all(),
            scan.sku if scan.trimmed else pl.col("sku_text").alias("sku"),
            # the other rows' texts are a few thousand: a small set to look each text up in
            pl.col("sku_text").is_in(scan.others["sku_text"].implode()).alias("mixed"),
        )
        for scan in scans
    ]
    pairs = (
        pl.concat([frame.lazy().select("sku") for frame in keys])
        .with_row_index("key")
        .join(
            catalog.lazy().select("vendorSku").with_row_index(CATALOG_ROW),
            left_on="sku",
            right_on="vendorSku",
            how="inner",
        )
        .filter(pl.col("sku") != "")
        .select("key", CATALOG_ROW)
        .collect(engine="streaming")
    )
    found = pl.repeat(None, sum(frame.height for frame in keys), dtype=pl.UInt32, eager=True)
    found = found.scatter(pairs["key"], pairs[CATALOG_ROW]).alias(CATALOG_ROW)
    # one chunk per feed in every column (scan_feed rechunks the keys): columns chunked alike
    # are filtered as they are, where unlike ones would first be copied whole
    offsets = accumulate((frame.height for frame in keys), initial=0)
    return pl.concat(
        [
            frame.with_columns(found.slice(at, frame.height))
            for frame, at in zip(keys, offsets, strict=False)
        ],
        rechunk=False,
    )


def _suspects(scan: FeedScan, rare: pl.Series) -> pl.DataFrame:
    """The feed's rows the rules must look at: not plain, or whose SKU is empty or unknown.

    `rare` is the feed's SKU texts that stand for no SKU, or one the catalog does not have.
    """
    rows = scan.others
    if rare.len():
        extra = (
            scan.feed.rows.with_row_index("index")
            .filter(pl.col("sku_text").is_in(rare.implode()))
            .select(rows.columns)
        )
        rows = pl.concat([rows, extra]).unique("index", keep="first").sort("index")
    feed = scan.feed
    return rows.select(
        (pl.col("index") + scan.offset).cast(pl.UInt32).alias("row_id"),
        pl.lit(feed.warehouse, pl.String).alias("warehouse"),
        pl.lit(feed.source, pl.String).alias("source"),
        (pl.col("index").cast(pl.Int64) + feed.first_line).alias("line"),
        "sku_text",
        "quantity_text",
        "index",
    )


def _plain_combinations(scans: Sequence[FeedScan], first_id: int) -> pl.DataFrame:
    """What GX sees of the plain rows: each distinct quantity once, with every flag passing."""
    values = pl.concat([s.plain_values for s in scans]).unique().sort()
    return pl.DataFrame({"quantity_number": values.cast(pl.Float64)}).select(
        (pl.int_range(pl.len(), dtype=pl.UInt32) + first_id).alias("row_id"),
        pl.lit(True).alias("sku_is_present"),
        pl.lit(True).alias("quantity_is_present"),
        pl.lit(True).alias("quantity_is_integer"),
        "quantity_number",
        pl.lit(True).alias("sku_in_catalog"),
    )


def flags_from(outcomes: list[Outcome]) -> pl.DataFrame:
    """One row per (row_id, reason) the suite flagged."""
    frames = [
        pl.DataFrame(
            {"row_id": o.row_ids, "reason": o.reason, "action": o.action},
            schema=FLAG_SCHEMA,
        )
        for o in outcomes
        if o.row_ids
    ]
    return pl.concat(frames) if frames else pl.DataFrame(schema=FLAG_SCHEMA)


def _stock(
    listed: pl.DataFrame, judged: pl.DataFrame, trimmed: Sequence[str]
) -> tuple[pl.LazyFrame, int]:
    """The plain sums, corrected by the judged rows, per warehouse and SKU; how many there are.

    warehouse, sku, quantity, catalog_row. A judged row that was summed as plain gives its
    quantity back; one that counts adds the quantity the rules read, and one that is dropped
    leaves the SKU's count of rows. A SKU with no row that counts is not listed at all. Only
    the texts with a judged row are corrected: those with a row that is not plain, and those
    that stand for no SKU or an unknown one (all of their rows are judged); and every text
    of a feed whose SKUs need trimming, as " A" and "A" are one SKU there. The others stand
    as they are, read lazily, never copied out.
    """
    counted = pl.col("counts")
    corrections = (
        judged.select(
            pl.col("warehouse").cast(listed.schema["warehouse"]),
            "sku_text",
            (
                pl.when(counted).then(pl.col("quantity").fill_null(0)).otherwise(0)
                - pl.when(pl.col("plain")).then(PLAIN_QUANTITY).otherwise(0)
            ).alias("change"),
            (counted.cast(pl.Int64) - 1).alias("row_change"),
        )
        .group_by("warehouse", "sku_text")
        .agg(pl.col("change").sum(), pl.col("row_change").sum())
    )
    touched = pl.col("mixed").fill_null(True) | pl.col(CATALOG_ROW).is_null()
    if trimmed:
        touched = touched | pl.col("warehouse").is_in(list(trimmed))
    columns = ("warehouse", "sku", "quantity", CATALOG_ROW)
    corrected = (
        listed.filter(touched)
        .join(corrections, on=["warehouse", "sku_text"], how="left", nulls_equal=True)
        .filter(
            pl.col("sku").is_not_null()
            & (pl.col("sku") != "")
            & (pl.col("rows") + pl.col("row_change").fill_null(0) > 0)
        )
        .group_by("warehouse", "sku")
        .agg(
            (pl.col("quantity") + pl.col("change").fill_null(0)).sum(),
            pl.col(CATALOG_ROW).first(),
        )
        .select(columns)
    )
    kept = listed.lazy().filter(~touched).select(columns)
    totals = listed.select((~touched).sum()).item() + corrected.height
    return pl.concat([kept, corrected.lazy()]), totals


def _listed_skus(scan: FeedScan) -> int:
    """How many distinct SKUs the feed lists (an empty one counts too)."""
    texts = scan.keys["sku_text"].drop_nulls()
    return texts.str.strip_chars().n_unique() if scan.trimmed else texts.len()


def judge(scans: Sequence[FeedScan], catalog: pl.DataFrame) -> CheckedRows | None:
    """Validate the suspects row by row and the plain values once; None if GX refuses a plain one."""
    warehouses = pl.Enum([scan.feed.warehouse for scan in scans])
    listed = _listed(scans, catalog, warehouses)
    rare = listed.filter(pl.col("sku_text").is_not_null() & pl.col(CATALOG_ROW).is_null())
    unknown = rare.filter(pl.col("sku") != "")["sku"].unique()
    suspects = [
        _suspects(scan, rare.filter(pl.col("warehouse") == scan.feed.warehouse)["sku_text"])
        for scan in scans
    ]
    parsed = parse_rows(pl.concat(suspects), ~pl.col("sku").is_in(unknown.implode()))
    first_plain = sum(scan.feed.rows.height for scan in scans)
    combinations = (
        _plain_combinations(scans, first_plain) if any(s.shortcut for s in scans) else None
    )
    checked = parsed if combinations is None else pl.concat([parsed, combinations], how="diagonal")
    flags = flags_from(validate_distinct(checked, SUITE))
    if flags.filter(pl.col("row_id") >= first_plain).height:
        return None
    dropped = flags.filter(pl.col("action").is_in(DROPPING_ACTIONS))["row_id"].unique()
    judged = parsed.with_columns(
        counts=~pl.col("row_id").is_in(dropped.implode()),
        plain=scans[0].plain if scans else pl.lit(False),  # scan_feeds gives all one shortcut
    )
    stock, totals = _stock(listed, judged, [scan.feed.warehouse for scan in scans if scan.trimmed])
    flagged = (
        flags.join(parsed.select(FLAGGED_COLUMNS[:-2]), on="row_id", how="left")
        .select(FLAGGED_COLUMNS)
        .sort("row_id", "reason")
    )
    held = (
        flags.filter(pl.col("action") == "hold")
        .join(parsed.select("row_id", "sku"), on="row_id")["sku"]
        .drop_nulls()
        .unique()
        .sort()
    )
    return CheckedRows(
        stock=stock,
        totals=totals,
        flagged=flagged,
        held_skus=held,
        skus={scan.feed.warehouse: _listed_skus(scan) for scan in scans},
    )


def scan_feeds(feeds: Sequence[Feed], shortcut: bool = True) -> list[FeedScan]:
    """Scan every feed; row ids run across the feeds in their order, as in the run's reports."""
    offsets = accumulate((feed.rows.height for feed in feeds), initial=0)
    return [scan_feed(feed, at, shortcut) for feed, at in zip(feeds, offsets, strict=False)]


def check_rows(feeds: Sequence[Feed], catalog: pl.DataFrame) -> CheckedRows:
    """Parse and validate every feed's rows; sum the rows that count per warehouse and SKU."""
    checked = judge(scan_feeds(feeds), catalog)
    if checked is None:  # the suite refused a value taken as plain: no shortcut then
        checked = judge(scan_feeds(feeds, shortcut=False), catalog)
        assert checked is not None  # no plain values, nothing the suite could refuse
    return checked


@task(name="check-rows", cache_policy=NO_CACHE)
def check_rows_task(feeds: Sequence[Feed], catalog: pl.DataFrame) -> CheckedRows:
    """Run the warehouse-rows suite and log what it flagged."""
    checked = check_rows(feeds, catalog)
    logger = get_run_logger()
    logger.info(
        "%d rows checked: %d flagged, %d SKU(s) held; %d warehouse-SKU total(s)",
        sum(feed.rows.height for feed in feeds),
        checked.flagged["row_id"].n_unique(),
        checked.held_skus.len(),
        checked.totals,
    )
    for reason, count in checked.flagged.group_by("reason").len().sort("reason").iter_rows():
        logger.info("  %s: %d row(s)", reason, count)
    return checked
