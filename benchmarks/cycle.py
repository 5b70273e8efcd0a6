"""Benchmark 4: the 15-minute cycle, a 2 % change after a full sync of 1M products, via the CLI.

Also a full catalog refresh of the same catalog through 2 % page faults (503, 429, drops).

Usage: python -m benchmarks.cycle [--products 1000000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import dataset as data
from benchmarks.machine import load_average
from benchmarks.processes import (
    BIN,
    Measured,
    PrefectServer,
    prefect_server,
    run_measured,
    sandbox_server,
    settle,
)
from benchmarks.transform import DEFAULT_ROOT

PRODUCTS = 1_000_000
CHANGED_SHARE = 0.02
TARGET_SECONDS = 10.0
TARGET_GETS = 100
FULL_SYNC_OPTIONS = ""  # as configured by default: it reads the API catalog and keeps it
# Where each stage of a CLI run ends, from the flow's own log: the last line matching each.
STAGE_ENDS = (
    ("start-up: imports, config, flow run", r"Beginning flow run"),
    ("extract and catalog", r"Task run '(extract |read-catalog).*Finished in state"),
    ("check rows", r"Task run 'check-rows.*Finished in state"),
    ("reconcile", r"Task run 'reconcile.*Finished in state"),
    ("check payload", r"Task run 'check-payload.*Finished in state"),
    ("delta and change guard", r"- load: \d+ product"),
    ("load", r"Task run 'chunk .*Finished in state"),
    ("read-back", r"Task run 'read-back.*Finished in state"),
    ("summary, reports, artifacts", r"Flow run '[^']*' - (OK|FAILED): "),
)
LAST_STAGE = "good feeds kept, exit"
LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \|")
PAGE_FAULT_SHARE = 0.02
# Config changes whose effect is measured too: each is a setting a user can make today.
VARIANTS = {
    "as configured by default (kept API catalog, read-back of 50 pages)": "",
    "no read-back": "no_read_back",
}


def config_text(dataset_feeds: list[Path], catalog_csv: Path, options: str) -> str:
    """The sync's TOML: ten CSV warehouses; the sandbox URL comes from LIGHTSPEED_BASE_URL."""
    catalog = (
        f'source = "file"\npath = "{catalog_csv}"'
        if "catalog_file" in options
        else 'source = "api"'
    )
    read_back = "false" if "no_read_back" in options else "true"
    warehouses = "".join(
        f'\n[[warehouses]]\nname = "{name}"\nkind = "csv"\npath = "{path}"\n'
        f'sku_column = "sku"\nquantity_column = "qty"\nsafety_stock = {safety}\n'
        for name, path, safety in zip(
            data.warehouse_names(), dataset_feeds, data.SAFETY_STOCK, strict=True
        )
    )
    return (
        '[lightspeed]\nbase_url = "http://127.0.0.1:1"\n\n'
        f"[catalog]\n{catalog}\n\n[guards]\nread_back = {read_back}\n"
        f'\n[report]\ndir = "reports"\n\n[state]\ndir = "state"\n{warehouses}'
    )


def stages(output: str, started: datetime, seconds: float) -> list[tuple[str, float]]:
    """Seconds per stage of a CLI run, from its log's timestamps (local time, like `started`)."""
    ends: dict[str, float] = {}
    for line in output.splitlines():
        stamp = LOG_TIME.match(line)
        if stamp is None:
            continue
        hour, minute, second, milli = (int(part) for part in stamp.groups())
        at = started.replace(hour=hour, minute=minute, second=second, microsecond=milli * 1000)
        if at < started - timedelta(minutes=1):  # past midnight
            at += timedelta(days=1)
        for stage, pattern in STAGE_ENDS:
            if re.search(pattern, line):
                ends[stage] = max(0.0, (at - started).total_seconds())
    out, previous = [], 0.0
    for stage, _ in STAGE_ENDS:
        end = min(max(ends.get(stage, previous), previous), seconds)
        out.append((stage, end - previous))
        previous = end
    return [*out, (LAST_STAGE, max(0.0, seconds - previous))]


@dataclass
class CycleRun:
    """One CLI run: how long, and what the sandbox saw."""

    label: str
    changed: int
    child: Measured
    requests: dict[str, int]
    bytes_in: int
    bytes_out: int
    sent: int
    load: str
    stages: list[tuple[str, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.child.seconds


@dataclass
class CycleResult:
    products: int
    full_sync: CycleRun | None = None
    runs: list[CycleRun] = field(default_factory=list)

    refresh: CycleRun | None = None  # a full catalog refresh through page faults

    def targets(self) -> list[tuple[str, str, bool]]:
        if not self.runs:
            return []
        first = self.runs[0]
        gets = first.requests.get("GET /products", 0)
        out = [
            (
                f"2 % cycle ≤ {TARGET_SECONDS:.0f} s end to end (default configuration)",
                f"{first.seconds:.1f} s",
                first.seconds <= TARGET_SECONDS and first.child.returncode == 0,
            ),
            (
                f"2 % cycle ≤ {TARGET_GETS} GET requests (default configuration)",
                f"{gets:,} GETs",
                gets <= TARGET_GETS,
            ),
        ]
        if self.refresh is not None:
            out.append(
                (
                    f"a full catalog refresh of {self.products:,} products through "
                    f"{PAGE_FAULT_SHARE:.0%} page faults completes",
                    f"{self.refresh.seconds:.1f} s, exit {self.refresh.child.returncode}",
                    self.refresh.child.returncode == 0,
                )
            )
        return out

    def lines(self) -> list[str]:
        out = []
        extra = [self.refresh] if self.refresh else []
        for run in ([self.full_sync] if self.full_sync else []) + self.runs + extra:
            requests = ", ".join(f"{n} {what}" for what, n in sorted(run.requests.items()))
            out.append(
                f"{run.label}: {run.seconds:.1f} s, exit {run.child.returncode}, "
                f"{_sent_text(run.sent)} ({run.changed:,} changed); {requests}; "
                f"sent {run.bytes_in / 1e6:,.1f} MB, received {run.bytes_out / 1e6:,.1f} MB "
                f"[load {run.load}]"
            )
            out.append("  " + ", ".join(f"{name} {sec:.1f}s" for name, sec in run.stages))
        return out


def _sent_text(sent: int) -> str:
    """Products sent, as the run's summary said; -1: a dry run, which sends nothing."""
    return "nothing sent (a dry run)" if sent < 0 else f"{sent:,} product(s) sent"


def _sent(output: str) -> int:
    match = re.search(r"Sent (\d+) of (\d+) product", output)
    return int(match[1]) if match else -1


def _traffic(log: list[dict[str, Any]]) -> tuple[dict[str, int], int, int]:
    counts: dict[str, int] = {}
    for request in log:
        what = f"{request['method']} {request['path'].split('?')[0]}"
        counts[what] = counts.get(what, 0) + 1
    return (
        counts,
        sum(int(r.get("bytes_in", 0)) for r in log),
        sum(int(r.get("bytes_out", 0)) for r in log),
    )


def measure(
    root: Path, products: int = PRODUCTS, variants: bool = True, api: str | None = None
) -> CycleResult:
    """Full sync, then one 2 % change per variant, each a fresh CLI process."""
    dataset = data.generate(root / f"products-{products}", products)
    result = CycleResult(products)
    with tempfile.TemporaryDirectory() as scratch_name:
        work = Path(scratch_name)
        shutil.copytree(dataset.folder / "feeds", work / "feeds")
        shutil.copy(dataset.catalog_csv, work / "catalog.csv")
        copy = data.Dataset(work, dataset.products, dataset.rows, dataset.seed)
        configs: dict[str, Path] = {}
        for label, options in VARIANTS.items():
            path = work / f"sync-{len(configs)}.toml"
            path.write_text(config_text(copy.feeds, copy.catalog_csv, options))
            configs[label] = path
            if not variants:
                break
        with (
            prefect_server(work / "prefect")
            if api is None
            else nullcontext(PrefectServer(api, None)) as server,
            sandbox_server(dataset.catalog_json, 100_000, work) as sandbox,
        ):
            env = {
                "PREFECT_API_URL": server.api,
                "LIGHTSPEED_BASE_URL": sandbox.url,
                "LIGHTSPEED_TOKEN": sandbox.token,
            }

            def cli_run(
                label: str,
                config: Path,
                changed: int,
                *extra: str,
                faults: list[dict[str, Any]] | None = None,
            ) -> CycleRun:
                settle(server.pid)  # the run before it digested, as 15 minutes later
                sandbox.reset_log()
                if faults:
                    sandbox.add_faults(faults)
                argv = [str(BIN / "inventory-sync"), "run", "--config", str(config), *extra]
                started = datetime.now()
                child = run_measured(argv, env=env, timeout=900)
                logs = root / "cycle-logs"  # the flow's own log, with a timestamp per stage
                logs.mkdir(parents=True, exist_ok=True)
                slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:60]
                (logs / f"{slug}.log").write_text(child.output, encoding="utf-8")
                if child.returncode != 0:
                    raise RuntimeError(f"{label} failed:\n{child.output[-4000:]}")
                counts, bytes_in, bytes_out = _traffic(sandbox.requests())
                return CycleRun(
                    label,
                    changed,
                    child,
                    counts,
                    bytes_in,
                    bytes_out,
                    _sent(child.output),
                    load_average(),
                    stages(child.output, started, child.seconds),
                )

            setup = work / "full-sync.toml"  # the quickest way there: the state is the same
            setup.write_text(config_text(copy.feeds, copy.catalog_csv, FULL_SYNC_OPTIONS))
            result.full_sync = cli_run(
                f"first, full sync of {products:,} products (default configuration: "
                "reads and keeps the API catalog)",
                setup,
                products,
            )
            print("\n".join(result.lines()[-2:]), flush=True)
            for number, (label, config) in enumerate(configs.items()):
                changed = data.change_quantities(copy, CHANGED_SHARE, seed=10 + number)
                result.runs.append(cli_run(f"2 % cycle, {label}", config, changed))
                print("\n".join(result.lines()[-2:]), flush=True)
            first_config = next(iter(configs.values()))
            result.refresh = cli_run(
                f"catalog refresh of {products:,} products through {PAGE_FAULT_SHARE:.0%} "
                "page faults (--refresh-catalog --dry-run)",
                first_config,
                0,
                "--refresh-catalog",
                "--dry-run",
                faults=page_faults(PAGE_FAULT_SHARE),
            )
            print("\n".join(result.lines()[-2:]), flush=True)
    return result


def page_faults(share: float) -> list[dict[str, Any]]:
    """503s, 429s with Retry-After 1 s and dropped connections, a third of `share` each."""
    each = {"method": "GET", "path": "/products", "rate": share / 3}
    return [
        {**each, "status": 503, "seed": 1},
        {**each, "status": 429, "retry_after": 1, "seed": 2},
        {**each, "drop": "before", "seed": 3},
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=PRODUCTS)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--no-variants", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.root, args.products, variants=not args.no_variants)
    for target, figure, met in result.targets():
        print(f"{'MET' if met else 'MISSED'} {target}: {figure}")


if __name__ == "__main__":
    main(sys.argv[1:])
