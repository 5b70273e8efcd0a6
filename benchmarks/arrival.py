"""Benchmark 5: feed-to-platform latency, from a feed's rename into place to the sandbox's update.

A Prefect server, the sandbox API, a `process` worker polling every second and
`inventory-sync watch`, all as their own processes, with the deployments of
deployments/prefect.yaml (schedules paused). After a full sync by the CLI, each round renames a
new export of one warehouse into place with one product's quantity raised, and times how long
until the sandbox received the PUT that set it (the sandbox applies a PUT before answering).

Usage: python -m benchmarks.arrival [--products 10000,1000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from benchmarks import cycle
from benchmarks import dataset as data
from benchmarks.machine import load_average
from benchmarks.processes import (
    BIN,
    ROOT,
    Sandbox,
    _process,
    prefect_server,
    run_measured,
    sandbox_server,
)
from benchmarks.transform import DEFAULT_ROOT

SIZES = (10_000, 1_000_000)
ROUNDS = 5
TARGET_PRODUCTS = 10_000
TARGET_SECONDS = 10.0
SETTLE, DEBOUNCE = "0.5s", "0.5s"  # the watcher's [watch] settings for this benchmark
WORKER_POLL_SECONDS = 1
DEPLOYMENT = "inventory-sync/on-feed-arrival"
ROUND_TIMEOUT = 600.0


STAGES = {
    "settle": "rename → the watcher's arrival",
    "window": "arrival → event sent",
    "trigger": "event → worker submits the run",
    "start": "submitted → the flow begins (new process, imports)",
    "run": "flow begins → the PUT lands",
}


@dataclass
class SizeResult:
    """Five rounds at one catalog size."""

    products: int
    seconds: list[float] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    full_sync_seconds: float = 0.0

    def stage_median(self, stage: str) -> float | None:
        found = [s[stage] for s in self.stages if stage in s]
        return statistics.median(found) if found else None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def maximum(self) -> float:
        return max(self.seconds)


@dataclass
class ArrivalResult:
    sizes: list[SizeResult] = field(default_factory=list)

    def at(self, products: int) -> SizeResult | None:
        return next((s for s in self.sizes if s.products == products), None)

    def targets(self) -> list[tuple[str, str, bool]]:
        size = self.at(TARGET_PRODUCTS)
        if size is None or not size.seconds:
            return []
        return [
            (
                f"feed-to-platform median ≤ {TARGET_SECONDS:.0f} s at {TARGET_PRODUCTS:,} products",
                f"{size.median:.1f} s (max {size.maximum:.1f} s)",
                size.median <= TARGET_SECONDS,
            )
        ]

    def lines(self) -> list[str]:
        return [
            f"{s.products:,} products: median {s.median:.1f} s, max {s.maximum:.1f} s of "
            f"{len(s.seconds)} ({', '.join(f'{x:.1f}' for x in s.seconds)}) "
            f"[load {', '.join(s.loads)}]"
            for s in self.sizes
            if s.seconds
        ]


def config_text(feeds: list[Path], catalog_csv: Path) -> str:
    """The cycle benchmark's ten CSV warehouses, with a quick watcher."""
    return (
        cycle.config_text(feeds, catalog_csv, "")
        + f'\n[watch]\nsettle = "{SETTLE}"\ndebounce = "{DEBOUNCE}"\n'
    )


def changeable(dataset: data.Dataset, count: int) -> list[tuple[str, str]]:
    """(vendorSku, id) of tracked, unambiguous products the first warehouse lists cleanly."""
    catalog = pl.read_csv(dataset.catalog_csv, infer_schema=False)
    unique = catalog.filter(
        (pl.col("isInventoryTrackingEnabled") == "true")
        & (pl.col("vendorSku").is_not_null())
        & (pl.col("vendorSku").count().over("vendorSku") == 1)
    )
    rows = pl.read_csv(dataset.feeds[0], infer_schema=False)
    clean = rows.group_by("sku").agg(pl.col("qty").str.contains(r"^[0-9]+$").all().alias("ok"))
    picked = (
        unique.join(clean.filter("ok"), left_on="vendorSku", right_on="sku")
        .sort("vendorSku")
        .head(count)
    )
    return list(zip(picked["vendorSku"], picked["id"], strict=True))


def _deploy(api: str, config: Path) -> None:
    """The work pool (one run at a time) and deployments/prefect.yaml, schedules paused."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    with SyncPrefectClient(api) as client:
        client.create_work_pool(
            WorkPoolCreate(
                name="inventory-sync",
                type="process",
                base_job_template=ProcessWorker.get_default_base_job_template(),
                concurrency_limit=1,
            ),
            overwrite=True,
        )
    argv = [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"]
    argv += ["--prefect-file", str(ROOT / "deployments" / "prefect.yaml")]
    env = {"PREFECT_API_URL": api, "INVENTORY_SYNC_CONFIG": str(config)}
    env["INVENTORY_SYNC_PYTHON"] = sys.executable  # as `inventory-sync deploy` sets it
    done = run_measured(argv, env=env, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{done.output[-3000:]}")
    with SyncPrefectClient(api) as client:
        for deployment in client.read_deployments():
            for schedule in deployment.schedules:
                client.update_deployment_schedule(deployment.id, schedule.id, active=False)


def _landed(sandbox: Sandbox, product: str) -> float | None:
    """When the sandbox received the accepted PUT carrying this product (monotonic seconds)."""
    for request in sandbox.requests():
        accepted = request["method"] == "PUT" and request["status"] == 200
        if accepted and product in request["product_ids"]:
            return float(request["at"])
    return None


def _first_after(log: Path, marker: str, after: datetime, clock: str) -> datetime | None:
    """The time of the first line holding `marker` logged after `after` (watcher or worker log)."""
    for line in log.read_text(errors="replace").splitlines():
        if marker not in line:
            continue
        try:
            if clock == "watcher":  # 2026-12-01 19:05:24,747 INFO ...
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            else:  # 19:05:26.589 | INFO | ... (the worker logs the time of day only)
                at = datetime.combine(
                    after.date(), datetime.strptime(line[:12], "%H:%M:%S.%f").time()
                )
        except ValueError:
            continue
        if at >= after:
            return at
    return None


def stages(
    watcher_log: Path, worker_log: Path, renamed: datetime, landed: datetime
) -> dict[str, float]:
    """Where the seconds of one round went, from the two processes' logs (local wall clock)."""
    arrival = _first_after(watcher_log, ": arrival ", renamed, "watcher")
    sent = arrival and _first_after(
        watcher_log, "sent inventory-sync.feed.arrived", arrival, "watcher"
    )
    submitted = sent and _first_after(worker_log, "submitting flow run", sent, "worker")
    began = submitted and _first_after(worker_log, "Beginning flow run", submitted, "worker")
    marks = [renamed, arrival, sent, submitted, began, landed]
    found: dict[str, float] = {}
    for stage, start, end in zip(STAGES, marks, marks[1:], strict=False):
        if start is None or end is None:
            break
        found[stage] = (end - start).total_seconds()
    return found


def _quantities(sandbox: Sandbox) -> dict[str, int]:
    answer = httpx.get(f"{sandbox.url}/_sandbox/quantities", timeout=300).json()
    return dict(answer.get("quantities", answer))


def measure_size(root: Path, products: int, rounds: int = ROUNDS) -> SizeResult:
    """Server, sandbox, worker and watcher for one catalog; a full sync; then `rounds` arrivals."""
    dataset = data.generate(root / f"products-{products}", products)
    result = SizeResult(products)
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as running:
        work = Path(scratch)
        feeds = [work / "feeds" / path.name for path in dataset.feeds]
        feeds[0].parent.mkdir()
        for source, target in zip(dataset.feeds, feeds, strict=True):
            target.write_bytes(source.read_bytes())
        config = work / "sync.toml"
        config.write_text(config_text(feeds, dataset.catalog_csv))
        server = running.enter_context(prefect_server(work / "prefect"))
        sandbox = running.enter_context(sandbox_server(dataset.catalog_json, 100_000, work))
        env = {
            "PREFECT_API_URL": server.api,
            "LIGHTSPEED_BASE_URL": sandbox.url,
            "LIGHTSPEED_TOKEN": sandbox.token,
        }
        _deploy(server.api, config)
        first = run_measured(
            [str(BIN / "inventory-sync"), "run", "--config", str(config), "--chunk-size", "5000"],
            env=env,
            timeout=1800,
        )
        if first.returncode != 0:
            raise RuntimeError(f"the full sync failed:\n{first.output[-3000:]}")
        result.full_sync_seconds = first.seconds
        worker_log = work / "worker.log"
        worker = [str(BIN / "prefect"), "worker", "start", "--pool", "inventory-sync"]
        worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_POLL_SECONDS)}
        worker_argv = [*worker, "--type", "process"]
        running.enter_context(_process("Prefect worker", worker_argv, worker_env, worker_log))
        watcher_log = work / "watcher.log"
        watch = [str(BIN / "inventory-sync"), "watch", "--config", str(config)]
        watcher = running.enter_context(_process("watcher", watch, env, watcher_log))
        watcher.wait_until_ready(
            lambda: "a change is an arrival after" in watcher.log_tail(50), timeout=120
        )
        before = _quantities(sandbox)
        original = feeds[0].read_bytes()
        for number, (sku, product) in enumerate(changeable(dataset, rounds)):
            extra = 1000 + number
            sandbox.reset_log()
            part = feeds[0].with_name(".incoming.part")
            part.write_bytes(original + f"{sku},B9,{extra}\n".encode())  # sku,bin,qty
            started, renamed = time.monotonic(), datetime.now()
            part.rename(feeds[0])
            landed = None
            while landed is None:
                if time.monotonic() - started > ROUND_TIMEOUT:
                    raise RuntimeError(f"round {number + 1}: nothing landed; see {watcher_log}")
                time.sleep(0.25)
                landed = _landed(sandbox, product)
            now = _quantities(sandbox)[product]
            if now != before[product] + extra:
                raise RuntimeError(f"{sku}: sandbox holds {now}, not {before[product] + extra}")
            result.seconds.append(landed - started)
            result.loads.append(load_average())
            wall = renamed + timedelta(seconds=landed - started)
            result.stages.append(stages(watcher_log, worker_log, renamed, wall))
            print(
                f"{products:,} products, round {number + 1}: {landed - started:.1f} s "
                f"({', '.join(f'{k} {v:.1f}' for k, v in result.stages[-1].items())}) "
                f"[load {result.loads[-1]}]",
                flush=True,
            )
            _wait_for_idle(server.api)
    return result


def _wait_for_idle(api: str, timeout: float = ROUND_TIMEOUT) -> None:
    """Until no run of the flow is unfinished, so rounds do not overlap."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    unfinished = FlowRunFilterState(
        type=FlowRunFilterStateType(
            any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
        )
    )
    deadline = time.monotonic() + timeout
    with SyncPrefectClient(api) as client:
        while True:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=unfinished))
            now = datetime.now(UTC)  # a nightly run scheduled for tomorrow is not in the way
            if not [r for r in runs if (r.expected_start_time or now) <= now]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("a run did not finish")
            time.sleep(0.5)
    time.sleep(2)  # the watcher's gate sees the run end too


def measure(
    root: Path, sizes: tuple[int, ...] = SIZES, rounds: int = ROUNDS, **_: Any
) -> ArrivalResult:
    """Each size in turn, each on its own server, sandbox, worker and watcher."""
    result = ArrivalResult()
    for products in sizes:
        result.sizes.append(measure_size(root, products, rounds))
        print("\n".join(result.lines()[-1:]), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", default=",".join(map(str, SIZES)))
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args(argv)
    sizes = tuple(int(n) for n in args.products.split(","))
    result = measure(args.root, sizes, args.rounds)
    for target, figure, met in result.targets():
        print(f"{'MET' if met else 'MISSED'} {target}: {figure}")


if __name__ == "__main__":
    main(sys.argv[1:])
