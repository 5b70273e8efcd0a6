"""The pictures in docs/benchmarks.md, drawn from one run's figures with matplotlib (the bench extra)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRANSFORM = "bench-transform.png"
LOAD = "bench-load.png"
CYCLE = "bench-cycle.png"


@dataclass(frozen=True)
class SizePoint:
    """One data set size: the pipeline's and the floor's seconds and peak GB."""

    products: int
    seconds: float
    peak_gb: float
    floor_seconds: float | None
    floor_peak_gb: float | None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def transform_plot(points: Sequence[SizePoint], path: Path) -> None:
    """Seconds and peak memory against products, the pipeline beside the plain-polars floor."""
    plt = _pyplot()
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(9, 3.6))
    products = [p.products for p in points]
    floored = [p for p in points if p.floor_seconds is not None]
    for axis, ours, floor, unit in (
        (time_axis, [p.seconds for p in points], [p.floor_seconds for p in floored], "seconds"),
        (memory_axis, [p.peak_gb for p in points], [p.floor_peak_gb for p in floored], "peak GB"),
    ):
        axis.plot(products, ours, "o-", label="pipeline (read, check, reconcile, validate)")
        if floored:
            axis.plot([p.products for p in floored], floor, "s--", label="plain-polars floor")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("products (about 9 feed rows each)")
        axis.set_ylabel(unit)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.set_title("Transform time")
    memory_axis.set_title("Peak memory (process RSS)")
    time_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def load_plot(
    products: int, rows: Sequence[tuple[int, float, float]], concurrency: int, path: Path
) -> None:
    """Products per second against request size: the pipeline's load and the bare httpx loop."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    sizes = [r for r, _, _ in rows]
    axis.plot(sizes, [products / p for _, p, _ in rows], "o-", label="the pipeline's load()")
    axis.plot(sizes, [products / b for _, _, b in rows], "s--", label="bare httpx loop")
    axis.set_xscale("log")
    axis.set_xticks(sizes, [str(s) for s in sizes])
    axis.set_xlabel("request_size (products per PUT)")
    axis.set_ylabel("products per second")
    axis.set_title(f"Full sync of {products:,} products, {concurrency} requests in flight")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def cycle_plot(runs: Sequence[tuple[str, Sequence[tuple[str, float]]]], path: Path) -> None:
    """Each run's stages, in order, as one stacked horizontal bar of seconds."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 1.6 + 0.6 * len(runs)))
    colours = plt.get_cmap("tab20").colors
    order: list[str] = []
    for _, stages in runs:
        order += [name for name, _ in stages if name not in order]
    labelled: set[str] = set()
    for row, (_, stages) in enumerate(runs):
        left = 0.0
        for name, seconds in stages:
            axis.barh(
                row,
                seconds,
                left=left,
                color=colours[order.index(name) % len(colours)],
                edgecolor="white",
                label=None if name in labelled else name,
            )
            labelled.add(name)
            if seconds >= 0.6:
                axis.text(left + seconds / 2, row, f"{seconds:.1f}", ha="center", va="center",
                          fontsize=7)  # fmt: skip
            left += seconds
    axis.set_yticks(range(len(runs)), [label for label, _ in runs], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("seconds, end to end (a fresh CLI process)")
    axis.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
