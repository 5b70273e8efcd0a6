"""Soak: hundreds of 15-minute cycles against a real Prefect server whose vacuum acts in minutes.

Each cycle changes 2 % of the quantities and runs the flow (real Prefect server, GX, sandbox API
over HTTP), then measures what the runs left behind: the Prefect database (its files and rows),
the state folder (the SQLite WAL included) and the reports folder. Retention is the product's
own, with its window shortened to `--window` seconds: the Prefect server's vacuum (every few
seconds, its clock run ahead: benchmarks/soak_server.py) and report.keep_days. It prints, and
writes into docs/benchmarks.md, each store's growth per run before and after its retention acts,
and a year's projection at 15-minute cycles for 10k and 1M products.

Usage: python -m benchmarks.soak [--cycles 300] [--products 2000] [--window 90]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import dataset as data
from benchmarks.doc_sections import DOC, DocSection
from benchmarks.machine import describe, load_average
from benchmarks.processes import QUIET_ENV, ROOT, Sandbox, sandbox_server
from benchmarks.soak_server import AHEAD_ENV
from devstack.processes import ManagedProcess, free_port, http_ok

SECTION = DocSection("<!-- soak: written by benchmarks/soak.py -->", "<!-- soak: end -->")
CYCLES = 300
MINUTES = 9.0  # the cycles stop here if they have not all run: a shared machine is slow
PRODUCTS = 2_000
WINDOW_SECONDS = (
    90.0  # what the soak keeps, in place of 30 days (flow runs, reports) and 7 (events)
)
VACUUM_LOOP_SECONDS = 5.0
CHANGED_SHARE = 0.02
CHUNKS = 10  # task runs per cycle: as many as a 2 % cycle of 1M products makes
PREFECT_MIN_RETENTION_SECONDS = 3601  # Prefect refuses a flow-run retention of an hour or less
RUNS_A_YEAR = 365 * 96
KEPT_DAYS = {"flow runs": 30, "events": 7, "reports": 30}
PROJECTED_SIZES = (10_000, 1_000_000)
PREFECT_TABLES = ("flow_run", "task_run", "log", "artifact", "events")


@dataclass(frozen=True)
class Sample:
    """The stores after one cycle."""

    cycle: int
    at: float  # seconds from the start of the first cycle to the end of this one
    seconds: float  # this cycle's run, wall time
    prefect_bytes: int  # the Prefect database's files: .db, -wal, -shm
    prefect_wal_bytes: int
    prefect_used_bytes: int  # the pages that hold rows, as a reader sees them: what runs add
    rows: dict[str, int]
    state_bytes: int  # the state folder, WAL included
    wal_bytes: int
    report_bytes: int
    report_files: int
    flagged: int  # rows the run quarantined


@dataclass
class SoakResult:
    products: int
    window: float
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    load_at_start: str = ""
    load_at_end: str = ""

    def growing(self) -> list[Sample]:
        """Cycles that ended before the first run was old enough to delete: growth unbounded."""
        first = self.samples[0].at if self.samples else 0.0
        return [s for s in self.samples if s.at - first <= self.window]

    def steady(self) -> list[Sample]:
        """Cycles well after the first deletions: the last half, if it starts past 2 windows."""
        first = self.samples[0].at if self.samples else 0.0
        late = self.samples[len(self.samples) // 2 :]
        return [s for s in late if s.at - first > 2 * self.window + VACUUM_LOOP_SECONDS]

    def per_run(self, samples: list[Sample], measure: str) -> float | None:
        """Bytes (or files) a run adds, as the slope of a least-squares line over the samples."""
        if len(samples) < 3:
            return None
        xs = [float(s.cycle) for s in samples]
        ys = [float(_value(s, measure)) for s in samples]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mean_x) ** 2 for x in xs)
        return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread

    def runs_in_window(self) -> float:
        return len(self.growing()) or 1.0


def _value(sample: Sample, measure: str) -> int:
    if measure in PREFECT_TABLES:
        return sample.rows.get(measure, 0)
    value: int = getattr(sample, measure)
    return value


# the Prefect server, the sandbox and the sync's files


@contextmanager
def soak_prefect_server(home: Path, window: float, log: Path) -> Iterator[str]:
    """The server with flow-run and event vacuum on, every few seconds, keeping `window` seconds."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        **QUIET_ENV,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": "",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(PREFECT_MIN_RETENTION_SECONDS),
        "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"PT{PREFECT_MIN_RETENTION_SECONDS}S",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS": str(VACUUM_LOOP_SECONDS),
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ORPHAN_CLEANUP_LOOP_SECONDS": str(4 * window),
        "PREFECT__SERVER_FINAL": "1",
        AHEAD_ENV: str(PREFECT_MIN_RETENTION_SECONDS - window),
    }
    argv = [sys.executable, "-m", "benchmarks.soak_server", str(port)]
    server = ManagedProcess("soak's Prefect server", argv, env, log, cwd=ROOT)
    try:
        server.start().wait_until_ready(lambda: http_ok(f"{api}/health"), timeout=180)
        yield api
    finally:
        server.stop()


def config_text(feeds: list[Path], window: float, chunk_size: int) -> str:
    """The sync's TOML: ten CSV warehouses, the API catalog, reports kept `window` seconds."""
    warehouses = "".join(
        f'\n[[warehouses]]\nname = "{name}"\nkind = "csv"\npath = "{path}"\n'
        f'sku_column = "sku"\nquantity_column = "qty"\nsafety_stock = {safety}\n'
        for name, path, safety in zip(data.warehouse_names(), feeds, data.SAFETY_STOCK, strict=True)
    )
    return (
        f'[lightspeed]\nbase_url = "http://127.0.0.1:1"\nchunk_size = {chunk_size}\n\n'
        f'[report]\ndir = "reports"\nkeep_days = {window / 86_400!r}\n\n'
        f'[state]\ndir = "state"\n{warehouses}'
    )


def folder_bytes(folder: Path) -> tuple[int, int]:
    """Bytes and files in a folder, recursively (0, 0 if it does not exist)."""
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def prefect_contents(database: Path) -> dict[str, Any]:
    """Rows in the tables that grow, and the bytes in use, read from the server's SQLite file.

    Deleted rows free pages that SQLite reuses but never gives back, so the file's size is a
    high-water mark; the pages in use (all less the free list) are what the runs hold now.
    """
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as db:
        rows = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in PREFECT_TABLES}
        pages, free, size = (
            db.execute(f"PRAGMA {pragma}").fetchone()[0]
            for pragma in ("page_count", "freelist_count", "page_size")
        )
    return {"rows": rows, "prefect_used_bytes": (pages - free) * size}


def prefect_bytes(home: Path) -> int:
    return sum(
        p.stat().st_size for p in home.glob("prefect.db*") if p.is_file()
    )  # the file, its WAL and shared memory


# the soak


def measure(
    root: Path, cycles: int, products: int, window: float, minutes: float = 1e9
) -> SoakResult:
    """Run the cycles and sample the stores after each."""
    dataset = data.generate(root / f"products-{products}", products)
    result = SoakResult(products, window, load_at_start=load_average())
    with tempfile.TemporaryDirectory(prefix="inventory-sync-soak-") as scratch:
        work = Path(scratch)
        shutil.copytree(dataset.folder / "feeds", work / "feeds")
        shutil.copy(dataset.catalog_csv, work / "catalog.csv")
        copy = data.Dataset(work, dataset.products, dataset.rows, dataset.seed)
        with (work / "feeds" / f"{data.warehouse_names()[0]}.csv").open("a") as feed:
            feed.write("NOT-IN-THE-CATALOG,A1,3\n")  # every real feed has a bad row or two
        chunk_size = max(1, round(products * CHANGED_SHARE / CHUNKS))
        config = work / "sync.toml"
        config.write_text(config_text(copy.feeds, window, chunk_size), encoding="utf-8")
        home = work / "prefect"
        with (
            soak_prefect_server(home, window, root / "soak-server.log") as api,
            sandbox_server(dataset.catalog_json, 100_000, work) as sandbox,
        ):
            _run_cycles(result, api, sandbox, config, copy, home, cycles, minutes)
    result.load_at_end = load_average()
    return result


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables while the cycles run (the flow reads the token from one)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_cycles(
    result: SoakResult,
    api: str,
    sandbox: Sandbox,
    config: Path,
    copy: data.Dataset,
    home: Path,
    cycles: int,
    minutes: float,
) -> None:
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.sync import inventory_sync

    began = time.perf_counter()
    environment = {
        **QUIET_ENV,
        "PREFECT_HOME": str(home / "client"),
        "LIGHTSPEED_BASE_URL": sandbox.url,
        "LIGHTSPEED_TOKEN": sandbox.token,
        # the soak prints its own lines; the runs' logs still all go to the server
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    }
    with _environment(environment), temporary_settings({PREFECT_API_URL: api}):
        for cycle in range(1, cycles + 1):
            if time.perf_counter() - began > minutes * 60:
                print(f"stopped after {cycle - 1} cycles: the {minutes:g}-minute budget is spent")
                break
            started = time.perf_counter()
            if cycle > 1:
                data.change_quantities(copy, CHANGED_SHARE, seed=cycle)
            changing = time.perf_counter() - started
            started = time.perf_counter()
            state = inventory_sync(config_path=str(config), return_state=True)
            seconds = time.perf_counter() - started
            summary = state.result(raise_on_failure=False)
            if not state.is_completed():
                raise RuntimeError(f"cycle {cycle} ended {state.name}: {summary}")
            if cycle % 50 == 0:
                sandbox.reset_log()  # the sandbox keeps every request otherwise
            result.samples.append(
                _sample(cycle, time.perf_counter() - began, seconds, home, config.parent, summary)
            )
            if cycle == 1 or cycle % 10 == 0 or cycle == cycles:
                sampling = time.perf_counter() - started - seconds
                print(
                    f"{_progress(result.samples[-1])} [feeds changed in {changing:.1f} s, "
                    f"sampled in {sampling:.1f} s]",
                    flush=True,
                )
        result.seconds = time.perf_counter() - began
        APILogWorker.drain_all(timeout=30)  # the last run's logs, while the server takes them


def _sample(
    cycle: int, at: float, seconds: float, home: Path, folder: Path, summary: Any
) -> Sample:
    state_bytes, _ = folder_bytes(folder / "state")
    wal = folder / "state" / "state.sqlite3-wal"
    report_bytes, report_files = folder_bytes(folder / "reports")
    return Sample(
        cycle=cycle,
        at=at,
        seconds=seconds,
        prefect_bytes=prefect_bytes(home),
        prefect_wal_bytes=_size_of(home / "prefect.db-wal"),
        **prefect_contents(home / "prefect.db"),
        state_bytes=state_bytes,
        wal_bytes=_size_of(wal),
        report_bytes=report_bytes,
        report_files=report_files,
        flagged=sum(summary.rows_flagged.values()),
    )


def _size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _progress(s: Sample) -> str:
    rows = ", ".join(f"{n:,} {t}" for t, n in s.rows.items())
    return (
        f"cycle {s.cycle} at {s.at:.0f} s ({s.seconds:.1f} s): Prefect {_mb(s.prefect_bytes)} "
        f"(WAL {_mb(s.prefect_wal_bytes)}) "
        f"({rows}); state {_mb(s.state_bytes)} (WAL {s.wal_bytes:,} B); reports "
        f"{s.report_files} files, {_mb(s.report_bytes)}"
    )


def _mb(size: float) -> str:
    return f"{size / 1e6:,.2f} MB"


def _size(size: float) -> str:
    if abs(size) >= 1e9:
        return f"{size / 1e9:,.1f} GB"
    if abs(size) >= 1e6:
        return f"{size / 1e6:,.1f} MB"
    return f"{size / 1e3:,.1f} kB"


# the figures and the year's projection

MEASURES = (
    ("Prefect database (files)", "prefect_bytes", _size),
    ("its WAL", "prefect_wal_bytes", _size),
    ("its pages in use", "prefect_used_bytes", _size),
    ("Prefect flow runs", "flow_run", lambda v: f"{v:,.2f}"),
    ("Prefect task runs", "task_run", lambda v: f"{v:,.2f}"),
    ("Prefect logs", "log", lambda v: f"{v:,.2f}"),
    ("Prefect events", "events", lambda v: f"{v:,.2f}"),
    ("state folder (WAL included)", "state_bytes", _size),
    ("state WAL after the run", "wal_bytes", _size),
    ("reports folder", "report_bytes", _size),
    ("report files", "report_files", lambda v: f"{v:,.2f}"),
)


def growth_table(result: SoakResult) -> list[list[str]]:
    growing, steady = result.growing(), result.steady()
    first, last = result.samples[0], result.samples[-1]
    rows = []
    for label, measure, show in MEASURES:
        before, after = result.per_run(growing, measure), result.per_run(steady, measure)
        rows.append(
            [
                label,
                show(_value(first, measure)),
                "n/a" if before is None else show(before),
                "n/a" if after is None else show(after),
                show(max(_value(s, measure) for s in result.samples)),
                show(_value(last, measure)),
            ]
        )
    return rows


def projection(result: SoakResult) -> list[list[str]]:
    """A year of 15-minute cycles: what each store holds with retention, and what it would without.

    Prefect: the pages in use a run adds before the vacuum acts, times the runs kept (30 days; events
    are kept 7, so this is an upper bound) or times a year's runs. Every soak run makes CHUNKS
    task runs, as a 2 % cycle of 1M products does (10k: one), so the figure does not scale with
    products. Reports: bytes per flagged row, at the soak's share of flagged rows per product.
    State: the soak's settled size, scaled by products.
    """
    growing, last = result.growing(), result.samples[-1]
    prefect_run = max(0.0, result.per_run(growing, "prefect_used_bytes") or 0.0)
    flagged = sum(s.flagged for s in result.samples) / len(result.samples)
    report_run = (result.per_run(growing, "report_bytes") or 0.0) / max(flagged, 1.0)
    runs_kept = KEPT_DAYS["flow runs"] * 96
    rows = []
    for products in PROJECTED_SIZES:
        scale = products / result.products
        rows.append(
            [
                f"{products:,}",
                f"{_size(prefect_run * runs_kept)} ({runs_kept:,} runs)",
                _size(prefect_run * RUNS_A_YEAR),
                _size(last.state_bytes * scale),
                f"{_size(report_run * flagged * scale * runs_kept)} ({runs_kept:,} files)",
                f"{_size(report_run * flagged * scale * RUNS_A_YEAR)} ({RUNS_A_YEAR:,} files)",
            ]
        )
    return rows


def section(result: SoakResult, command: str) -> str:
    steady = result.steady()
    lines = [
        "## Soak: a year of 15-minute runs, retention on",
        "",
        f"Written by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in "
        f"{result.seconds / 60:.1f} min; do not edit by hand. Machine: {describe()}. Load "
        f"average {result.load_at_start} at the start, {result.load_at_end} at the end.",
        "",
        f"{len(result.samples)} cycles of the flow against a real Prefect server (SQLite, "
        f"its own migrations and services) and the sandbox API: {result.products:,} products "
        f"in ten CSV feeds, {CHANGED_SHARE:.0%} of them changed each cycle, {CHUNKS} chunk task "
        "runs a cycle (as a 2 % cycle of 1M products makes), every run quarantining a few rows "
        "(so every run writes a report), the API catalog kept, read-back on. Cycles run back to "
        f"back, {result.seconds / max(len(result.samples), 1):.1f} s each, in one process "
        "(the state's end-of-run checkpoint is the same in a worker's or the CLI's process; "
        "tests/e2e/test_state_wal.py runs those). Retention is the product's own with its window "
        f"shortened to {result.window:.0f} s: the Prefect vacuum on flow runs and events every "
        f"{VACUUM_LOOP_SECONDS:.0f} s (Prefect refuses a retention under an hour, so the "
        "soak's server keeps an hour and runs the vacuum's clock ahead by an hour less the "
        "window: `benchmarks/soak_server.py`), and `report.keep_days` of the same window.",
        "",
        f"Growth per run: the slope over the {len(result.growing())} cycles before anything was "
        f"old enough to delete (before), and over the last {len(steady)} cycles (after; "
        "from the middle on, once past twice the window).",
        "",
    ]
    lines += _table(
        ["store", "after cycle 1", "per run, before", "per run, after", "largest", "at the end"],
        growth_table(result),
    )
    lines += [
        "",
        "A year at 96 runs a day: each store at its retention (flow runs and reports 30 days, "
        "events 7) and, for comparison, what it would hold with none. Prefect: the pages in use "
        "a run adds before the vacuum acts (the file adds its WAL and free pages on top: the "
        "table's largest file against its pages in use shows how much); every soak run has "
        f"{CHUNKS} chunk task runs, as at 1M products (a "
        "10k cycle has one, so its figure is an upper bound); events are kept 7 days, so the "
        "30-day figure is an upper bound too. Reports: the soak's bytes per flagged row at its "
        "share of flagged rows per product. State: the soak's size at the end, scaled by "
        "products; its WAL is emptied at the end of every run.",
        "",
    ]
    lines += _table(
        [
            "products",
            "Prefect database, kept 30 days",
            "without retention",
            "state",
            "reports, kept 30 days",
            "without retention",
        ],
        projection(result),
    )
    lines += [
        "",
        "```sh",
        "make soak   # or: .venv/bin/python -m benchmarks.soak --cycles 300 --window 90",
        "```",
    ]
    return SECTION.wrap(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def keep_section(previous: str, doc: Path = DOC) -> None:
    """For benchmarks/runner.py: put back this section after `make bench` rewrote the doc."""
    SECTION.keep(previous, doc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=CYCLES)
    parser.add_argument("--products", type=int, default=PRODUCTS)
    parser.add_argument("--window", type=float, default=WINDOW_SECONDS, help="seconds kept")
    parser.add_argument(
        "--minutes", type=float, default=MINUTES, help="stop the cycles after this long"
    )
    parser.add_argument("--root", type=Path, default=data.DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--command", default="", help="how this run was started, for the doc")
    args = parser.parse_args(argv)
    command = args.command or "python -m benchmarks.soak " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    result = measure(args.root, args.cycles, args.products, args.window, args.minutes)
    text = section(result, command.strip())
    print(text)
    if not args.no_doc:
        SECTION.write(text, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
