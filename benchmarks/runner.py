"""Run the five benchmarks and rewrite docs/benchmarks.md with their figures and plots.

Usage: python -m benchmarks.runner [--smoke] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import (
    arrival,
    cycle,
    load_overhead,
    pandas_reference,
    plots,
    soak,
    suppliers,
    transform,
)
from benchmarks import dataset as data
from benchmarks.machine import describe, load_average
from benchmarks.processes import ROOT

DOC = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Plan:
    """Sizes for one run of all five: the real ones, or tiny ones for the smoke test."""

    transform_sizes: tuple[int, ...] = transform.SIZES
    reference_products: int = pandas_reference.PRODUCTS
    load_products: int = load_overhead.PRODUCTS
    sweep: bool = True
    cycle_products: int = cycle.PRODUCTS
    cycle_variants: bool = True
    arrival_sizes: tuple[int, ...] = arrival.SIZES
    arrival_rounds: int = arrival.ROUNDS


SMOKE = Plan((2_000,), 2_000, 2_000, False, 2_000, False, (2_000,), 1)


@dataclass
class Results:
    command: str
    plan: Plan
    started: datetime
    load_at_start: str
    transform: transform.TransformResult | None = None
    reference: pandas_reference.ReferenceResult | None = None
    load: load_overhead.LoadResult | None = None
    cycle: cycle.CycleResult | None = None
    arrival: arrival.ArrivalResult | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def targets(self) -> list[tuple[str, str, bool]]:
        found: list[tuple[str, str, bool]] = []
        for part in (self.transform, self.reference, self.load, self.cycle, self.arrival):
            if part is not None:
                found += part.targets()
        return found


def run_all(root: Path, plan: Plan, command: str, api: str | None = None) -> Results:
    """The five benchmarks in order; each prints its figures as it goes."""
    results = Results(command, plan, datetime.now(UTC), load_average())
    started = time.perf_counter()
    print("== 1. transform", flush=True)
    results.transform = transform.measure(root, plan.transform_sizes)
    print("== 2. pandas reference", flush=True)
    size = results.transform.at(plan.reference_products)
    handed = (size.child, size.figures) if size else None
    results.reference = pandas_reference.measure(root, plan.reference_products, handed)
    print("\n".join(results.reference.lines()), flush=True)
    print("== 3. load overhead", flush=True)
    results.load = load_overhead.measure(root, plan.load_products, plan.sweep, api)
    print("\n".join(results.load.lines()), flush=True)
    print("== 4. 15-minute cycle", flush=True)
    results.cycle = cycle.measure(root, plan.cycle_products, plan.cycle_variants, api)
    print("== 5. feed-to-platform latency", flush=True)
    results.arrival = arrival.measure(root, plan.arrival_sizes, plan.arrival_rounds)
    results.seconds = time.perf_counter() - started
    for target, figure, met in results.targets():
        print(f"{'MET   ' if met else 'MISSED'} {target}: {figure}")
    print(f"all five in {results.seconds / 60:.1f} min", flush=True)
    return results


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def draw_plots(results: Results, folder: Path) -> dict[str, str]:
    """The doc's pictures, written into `folder`; which file each section shows."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, str] = {}
    if results.transform is not None and results.transform.sizes:
        points = [
            plots.SizePoint(
                s.products,
                s.seconds,
                s.child.peak_rss_gb,
                s.floor_seconds,
                s.floor.peak_rss_gb if s.floor else None,
            )
            for s in results.transform.sizes
        ]
        plots.transform_plot(points, folder / plots.TRANSFORM)
        drawn["transform"] = plots.TRANSFORM
    if results.load is not None:
        concurrency = load_overhead.DEFAULT_CONCURRENCY
        rows = [(r, p, b) for r, c, p, b in results.load.sweep() if c == concurrency]
        if rows:
            plots.load_plot(results.load.products, rows, concurrency, folder / plots.LOAD)
            drawn["load"] = plots.LOAD
    if results.cycle is not None:
        runs = [r for r in [results.cycle.full_sync, *results.cycle.runs] if r and r.stages]
        if runs:
            plots.cycle_plot([(r.label, r.stages) for r in runs], folder / plots.CYCLE)
            drawn["cycle"] = plots.CYCLE
    return drawn


def _picture(images: dict[str, str], key: str, caption: str) -> list[str]:
    return [f"![{caption}]({images[key]})", ""] if key in images else []


def render(results: Results, images: dict[str, str] | None = None) -> str:
    """docs/benchmarks.md: command, machine, targets, then each benchmark's figures and plots."""
    images = images or {}
    out = [
        "# Benchmarks",
        "",
        f"Written by `{results.command}` on {results.started:%Y-%m-%d %H:%M} UTC in "
        f"{results.seconds / 60:.1f} min; do not edit by hand. Machine: {describe()}. "
        f"Load average at the start: {results.load_at_start}. Every figure carries the load "
        "average (1, 5, 15 min) when it was taken: on a shared machine, compare with care. "
        "The plots are drawn by the same run (matplotlib, the `bench` extra).",
        "",
        "## Targets",
        "",
    ]
    out += _table(
        ["target", "measured", "met"],
        [[t, f, "yes" if met else "**no**"] for t, f, met in results.targets()],
    )
    out += ["", *_transform_section(results, images), *_reference_section(results)]
    out += [*_load_section(results, images), *_cycle_section(results, images)]
    out += [*_arrival_section(results), *_how_section()]
    return "\n".join(out) + "\n"


def _transform_section(results: Results, images: dict[str, str]) -> list[str]:
    part = results.transform
    if part is None:
        return []
    out = [
        "## 1. Transform: read, check, reconcile, validate",
        "",
        f"Ten warehouse CSV feeds (`benchmarks/dataset.py`): each warehouse stocks a product "
        f"with probability {data.STOCK_SHARE}, in 1-{data.MAX_BINS} bins (rows), so about 3 "
        "warehouses and 9 rows per product; safety stock per warehouse "
        f"{', '.join(map(str, data.SAFETY_STOCK))}; {data.UNTRACKED_SHARE:.0%} of products "
        "untracked, a few ambiguous or without a SKU; "
        f"{data.BAD_ROW_SHARE:.2%} of rows each with an empty SKU, an unknown SKU, `abc`, "
        "`3.5` or a negative quantity; 1 % `12.0`, 0.5 % padded. The catalog is read from its "
        'CSV (`catalog.source = "file"`), alongside the feeds as in the flow. Stages 1-4 '
        "of the flow with its own functions, in a fresh process after the imports (Great "
        "Expectations and Prefect: about a third of a GB); peak = the process's peak RSS "
        "(wait4), imports included. Beside it, in its own process, the floor "
        "(`benchmarks/floor.py`): plain polars doing the same read, parse, per-warehouse sum, "
        "safety stock, cross-warehouse sum and catalog join, with no checks and no reports, "
        "importing polars only. At 1M products each runs "
        f"{transform.ROUNDS_AT_TARGET} times, alternating, and the median run is shown.",
        "",
    ]
    stages = list(part.sizes[0].figures["stages"]) if part.sizes else []
    rows = []
    for size in part.sizes:
        floor_cells = (
            [
                f"{size.floor_seconds:.1f}",
                f"{size.floor.peak_rss_gb:.2f}",
                f"{size.time_ratio:.2f}x",
                f"{size.memory_ratio:.2f}x",
            ]
            if size.floor is not None and size.floor_seconds
            else ["", "", "", ""]
        )
        rows.append(
            [
                f"{size.products:,}",
                f"{size.rows:,}",
                f"{size.feed_mb:,.0f}",
                f"**{size.seconds:.1f}**",
                f"{size.figures.get('cpu_seconds', 0.0):.1f}",
                f"**{size.child.peak_rss_gb:.2f}**",
                *floor_cells,
                *[f"{size.figures['stages'][s]:.1f}" for s in stages],
                size.load,
            ]
        )
    out += _table(
        [
            "products", "rows", "feed MB", "seconds", "CPU s", "peak GB", "floor s",
            "floor peak GB", "time / floor", "memory / floor", *[f"{s} s" for s in stages], "load",
        ],
        rows,
    )  # fmt: skip
    biggest = part.sizes[-1] if part.sizes else None
    if biggest is not None and len(part.sizes) > 1:
        first = part.sizes[0]
        grow = biggest.seconds / first.seconds
        out += [
            "",
            f"From {first.products:,} to {biggest.products:,} products "
            f"({biggest.products / first.products:.0f}x), time grows {grow:.1f}x and peak "
            f"memory {biggest.child.peak_rss_gb / first.child.peak_rss_gb:.1f}x.",
        ]
    peaks = [
        f"{s.products:,}: "
        + ", ".join(f"{k} {v:.2f}" for k, v in s.figures["peak_gb_after"].items())
        for s in part.sizes
    ]
    out += ["", "Peak RSS (GB) after each stage: " + "; ".join(peaks) + ".", ""]
    return out + _picture(images, "transform", "Transform time and peak memory against products")


def _reference_section(results: Results) -> list[str]:
    part = results.reference
    if part is None:
        return []
    return [
        "## 2. Against a plain pandas reference",
        "",
        "`benchmarks/pandas_reference.py` applies the same rules the obvious way in pandas "
        "(read_csv as text, str methods, groupby, map), on the same files, in the same run, "
        "and its payload and flag counts are compared with the pipeline's.",
        "",
        *_table(
            [
                "products",
                "pipeline s",
                "pipeline peak GB",
                "pandas s",
                "pandas peak GB",
                "ratio",
                "same output",
                "load",
            ],
            [
                [
                    f"{part.products:,}",
                    f"{part.pipeline_figures['seconds']:.1f}",
                    f"{part.pipeline.peak_rss_gb:.2f}",
                    f"{part.pandas_figures['seconds']:.1f}",
                    f"{part.pandas.peak_rss_gb:.2f}",
                    f"**{part.ratio:.1f}x**",
                    "yes" if part.same_output else "**no**",
                    part.load,
                ]
            ],
        ),
        "",
    ]


def _load_section(results: Results, images: dict[str, str]) -> list[str]:
    part = results.load
    if part is None:
        return []
    default = part.default
    out = [
        "## 3. Load: a full sync through Prefect against a bare httpx loop",
        "",
        f"{part.products:,} products to the sandbox API (`inventory-sync-dev sandbox`, its own "
        "process) with a local Prefect server (its own process), on the same cores: the "
        "pipeline's `load()` (requests of `request_size` products grouped in chunks, a Prefect "
        "task run per chunk, retries, a state commit per accepted request, progress artifact) "
        "against a bare httpx loop with a thread pool sending the same requests with the same "
        f"concurrency, alternating, median of {load_overhead.ROUNDS} [load {part.load}]. "
        "A third arm runs as many Prefect task runs as the load makes, with the same chunks as "
        "parameters, doing nothing: what orchestration alone costs. Task runs are counted on "
        "the Prefect server. CPU seconds are per process; the Prefect server's include the "
        "digest it does after a trial returns (the next trial waits for it, so one trial's "
        "digest does not slow the next).",
        "",
        *_table(
            [
                f"request_size {default[0]}, {default[1]} in flight",
                "seconds",
                "task runs",
                "client CPU s",
                "Prefect server CPU s",
                "sandbox CPU s",
            ],
            [
                [
                    label,
                    f"{part.median(kind, *default):.2f}",
                    f"{part.task_runs(kind):,}",
                    *[f"{v:.2f}" for v in part.cpu(kind, *default)],
                ]
                for kind, label in (
                    ("bare", "bare httpx loop"),
                    ("prefect", "Prefect task runs doing nothing"),
                    ("pipeline", "the pipeline's load()"),
                )
            ],
        ),
        "",
        *_table(
            [
                "request_size",
                "max_concurrency",
                "pipeline s",
                "bare loop s",
                "ratio",
                "pipeline products/s",
            ],
            [
                [
                    f"{request}" + (" (target)" if (request, conc) == default else ""),
                    str(conc),
                    f"{p:.2f}",
                    f"{b:.2f}",
                    f"{p / b:.2f}x",
                    f"{part.products / p:,.0f}",
                ]
                for request, conc, p, b in part.sweep()
            ],
        ),
    ]
    chunks = part.chunks
    bare, floor, pipeline = (part.cpu(k, *default) for k in ("bare", "prefect", "pipeline"))
    requests = -(-part.products // default[0])
    out += [
        "",
        f"At the target ({requests:,} requests in {chunks} chunks): the bare loop uses "
        f"{1000 * bare[0] / requests:.2f} ms of client CPU per request; an empty task run "
        f"costs {1000 * floor[0] / chunks:.1f} ms in the client and "
        f"{1000 * floor[1] / chunks:.0f} ms in the Prefect server, i.e. "
        f"{1000 * (floor[0] + floor[1]) / requests:.2f} ms per request once "
        f"{requests // chunks} requests share a task run; the pipeline uses "
        f"{1000 * (pipeline[0] - bare[0] - floor[0]) / requests:.2f} ms more client CPU per "
        "request than the bare loop and the empty task runs together (the state log's commit, "
        "the request's outcome in the log, retries and pacing, Prefect's engine doing more "
        "for a task run that works).",
        "",
    ]
    return out + _picture(images, "load", "Load throughput against request size")


def _cycle_section(results: Results, images: dict[str, str]) -> list[str]:
    part = results.cycle
    if part is None:
        return []
    runs = (
        ([part.full_sync] if part.full_sync else [])
        + part.runs
        + ([part.refresh] if part.refresh else [])
    )
    staged = [run for run in runs if run.stages]
    names = [name for name, _ in staged[0].stages] if staged else []
    out = [
        "## 4. The 15-minute cycle",
        "",
        f"`inventory-sync run --config …` as a fresh process against a persistent "
        "`prefect server start` (SQLite, temporary PREFECT_HOME) and the sandbox API holding "
        f"{part.products:,} products: a full sync first (it reads the API catalog and keeps it "
        "in the state store), then, per configuration, a run after "
        f"{cycle.CHANGED_SHARE:.0%} of quantities changed (the kept catalog, no catalog GETs; "
        "the read-back reads its 50 pages of the rotation), and last a full catalog refresh "
        f"through {cycle.PAGE_FAULT_SHARE:.0%} page faults. Requests and bytes are from the "
        "sandbox's request log (bytes in: request line, headers and body; out: response "
        "bodies). Stages are read from the run's own log (where each one's last line is). "
        "Before each run the benchmark waits until the Prefect server has digested the run "
        "before it (its CPU idle for half a second), as it has when a cycle comes 15 minutes "
        "later.",
        "",
        *_table(
            ["run", "seconds", "products sent", "requests", "MB sent", "MB received", "load"],
            [
                [
                    run.label,
                    f"**{run.seconds:.1f}**",
                    f"{run.sent:,}" if run.sent >= 0 else "none (dry run)",
                    ", ".join(f"{n:,} {what}" for what, n in sorted(run.requests.items())),
                    f"{run.bytes_in / 1e6:,.1f}",
                    f"{run.bytes_out / 1e6:,.1f}",
                    run.load,
                ]
                for run in runs
            ],
        ),
        "",
    ]
    if staged:
        out += _table(
            ["run", *[f"{name} s" for name in names]],
            [[run.label, *[f"{sec:.1f}" for _, sec in run.stages]] for run in staged],
        )
        out.append("")
    return out + _picture(images, "cycle", "The cycle's stages, end to end")


def _arrival_section(results: Results) -> list[str]:
    part = results.arrival
    if part is None:
        return []
    return [
        "## 5. Feed-to-platform latency",
        "",
        "A Prefect server, the sandbox API, a `process` worker (polling every "
        f"{arrival.WORKER_POLL_SECONDS} s) and `inventory-sync watch` (settle {arrival.SETTLE}, "
        f"debounce {arrival.DEBOUNCE}), each its own process, with the deployments of "
        "`deployments/prefect.yaml`; the ten CSV warehouses of benchmark 4 after a full sync by "
        "the CLI. Each round renames a new export of the first warehouse into place, with one "
        "product's quantity raised, and times it until the sandbox receives the PUT that sets "
        "it (checked afterwards: the sandbox then holds the new quantity). The triggered run "
        "reads that warehouse and counts the nine others with their last good feed. Between "
        "the rename and the PUT: settle + debounce, the event and its trigger, the worker's "
        "poll, a new flow-run process (Python, Prefect, polars and Great Expectations imports), "
        "and the run itself.",
        "",
        "Median seconds per stage, from the watcher's and the worker's logs: "
        + "; ".join(f"{name}: {what}" for name, what in arrival.STAGES.items())
        + ".",
        "",
        *_table(
            [
                "products",
                "median s",
                "max s",
                "rounds (s)",
                *arrival.STAGES,
                "full sync first s",
                "load",
            ],
            [
                [
                    f"{size.products:,}",
                    f"**{size.median:.1f}**",
                    f"{size.maximum:.1f}",
                    ", ".join(f"{s:.1f}" for s in size.seconds),
                    *[
                        "?" if (m := size.stage_median(stage)) is None else f"{m:.1f}"
                        for stage in arrival.STAGES
                    ],
                    f"{size.full_sync_seconds:.1f}",
                    "; ".join(size.loads),
                ]
                for size in part.sizes
                if size.seconds
            ],
        ),
        "",
    ]


def _how_section() -> list[str]:
    return [
        "## Running them",
        "",
        "```sh",
        "make bench                                   # all five, rewrites this file and its plots",
        ".venv/bin/python -m benchmarks.transform --sizes 100000,1000000",
        ".venv/bin/python -m benchmarks.floor --products 1000000",
        ".venv/bin/python -m benchmarks.pandas_reference --products 1000000",
        ".venv/bin/python -m benchmarks.load_overhead --products 1000000",
        ".venv/bin/python -m benchmarks.cycle --products 1000000",
        ".venv/bin/python -m benchmarks.arrival --products 10000,1000000 --rounds 5",
        "```",
        "",
        f"Data sets are generated once under `{transform.DEFAULT_ROOT}` (`--root` elsewhere) "
        "and reused while their parameters match.",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks, not figures")
    parser.add_argument("--root", type=Path, default=transform.DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--command", default="", help="how this run was started, for the doc")
    args = parser.parse_args(argv)
    command = args.command or shlex.join(["python", "-m", "benchmarks.runner", *(argv or [])])
    results = run_all(args.root, SMOKE if args.smoke else Plan(), command)
    images = draw_plots(results, args.out.parent)
    kept = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    args.out.write_text(render(results, images), encoding="utf-8")
    suppliers.keep_section(kept, args.out)  # written by its own, longer benchmark
    soak.keep_section(kept, args.out)  # so is the soak's (`make soak`)
    print(f"wrote {args.out} and {', '.join(images.values())}")


if __name__ == "__main__":
    main(sys.argv[1:])
