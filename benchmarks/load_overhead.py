"""Benchmark 3: the pipeline's chunked load vs a bare httpx loop, same chunks, same sandbox.

Usage: python -m benchmarks.load_overhead [--products 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks import dataset as data
from benchmarks.machine import load_average
from benchmarks.processes import (
    PrefectServer,
    last_json,
    prefect_server,
    python_module,
    run_measured,
    sandbox_server,
)
from benchmarks.transform import DEFAULT_ROOT

PRODUCTS = 100_000
DEFAULT_CHUNK, DEFAULT_CONCURRENCY = 500, 4  # lightspeed.chunk_size and max_concurrency
ROUNDS = 3  # bare and pipeline alternate, so a noisy moment hurts both alike
SWEEP_CHUNKS = (250, 500, 1000, 2000, 5000)
SWEEP_CONCURRENCY = (1, 2, 4, 8)
TARGET_RATIO = 1.5


def bare_loop(url: str, token: str, chunks: list[Any], concurrency: int) -> None:
    """PUT each chunk with a plain httpx client and a thread pool: the cost of the HTTP alone."""
    import httpx

    from tasks.lightspeed.load import chunk_body

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=url, headers=headers, limits=limits, timeout=60) as client:

        def put(chunk: Any) -> None:
            client.put("/inventory", content=chunk_body(chunk)).raise_for_status()

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(put, chunks))


def prefect_floor(chunks: list[Any], concurrency: int) -> None:
    """The same number of Prefect task runs, with the same parameters, that send nothing."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    @task(name="noop-chunk", cache_policy=NO_CACHE)
    def noop_chunk(chunk: Any, number: int) -> int:
        return int(chunk.height)

    with ThreadPoolTaskRunner(max_workers=concurrency) as runner:  # type: ignore[var-annotated]
        futures = [
            runner.submit(noop_chunk, parameters={"chunk": c, "number": n})
            for n, c in enumerate(chunks, start=1)
        ]
        for future in futures:
            future.result()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (not of its children)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def settle(pid: int | None, limit: float = 60.0) -> float:
    """Wait until the Prefect server has digested the last trial's task runs; seconds waited.

    It does so after a trial returns, on the same cores: without this wait, its work for
    one trial slowed the next.
    """
    if pid is None:
        return 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.05:
            break
    return time.perf_counter() - started


def run_trials(
    url: str,
    token: str,
    payload_file: Path,
    trials: list[dict[str, Any]],
    pids: dict[str, int],
) -> list[dict[str, Any]]:
    """In the child, inside one Prefect flow run: each trial's seconds and CPU per process.

    `pids` names the other processes whose CPU to count (server, sandbox); this one is "client".
    """
    pids = {"client": os.getpid(), **pids}
    import polars as pl
    from prefect import flow
    from pydantic import SecretStr

    from tasks.config.settings import LightspeedSettings
    from tasks.lightspeed.load import load, split_into_chunks
    from tasks.state import StateLocation, StateStore

    payload = pl.read_parquet(payload_file)

    @flow(name="load-benchmark")
    def trials_flow() -> list[dict[str, Any]]:
        results = []
        for trial in trials:
            chunk, concurrency = int(trial["chunk"]), int(trial["concurrency"])
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.perf_counter()
            failed = 0
            if trial["kind"] == "bare":
                bare_loop(url, token, split_into_chunks(payload, chunk), concurrency)
            elif trial["kind"] == "prefect":
                prefect_floor(split_into_chunks(payload, chunk), concurrency)
            else:
                settings = LightspeedSettings(
                    base_url=url, chunk_size=chunk, max_concurrency=concurrency, timeout_seconds=60
                )
                with tempfile.TemporaryDirectory() as folder:
                    state = StateLocation.of(folder)
                    with StateStore(state).exclusive("bench"):
                        outcome = load(payload, settings, SecretStr(token), state, "bench")
                failed = len(outcome.failed)
            seconds = time.perf_counter() - started
            waited = settle(pids.get("server"))
            cpu = {f"cpu_{n}": cpu_seconds(p) - cpu_before[n] for n, p in pids.items()}
            results.append({**trial, "seconds": seconds, "failed": failed, "settle": waited, **cpu})
        return results

    return trials_flow()


@dataclass
class LoadResult:
    products: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    requests_seen: int = 0
    load: str = ""

    def times(self, kind: str, chunk: int, concurrency: int) -> list[float]:
        return [
            t["seconds"]
            for t in self.trials
            if (t["kind"], t["chunk"], t["concurrency"]) == (kind, chunk, concurrency)
        ]

    def cpu(self, kind: str, chunk: int, concurrency: int) -> tuple[float, float, float]:
        """Median CPU seconds of (client, Prefect server, sandbox) over the matching trials."""
        matching = [
            t
            for t in self.trials
            if (t["kind"], t["chunk"], t["concurrency"]) == (kind, chunk, concurrency)
        ]
        client, server, sandbox = (
            statistics.median(float(t.get(f"cpu_{name}", 0.0)) for t in matching)
            if matching
            else 0.0
            for name in ("client", "server", "sandbox")
        )
        return client, server, sandbox

    def median(self, kind: str, chunk: int, concurrency: int) -> float:
        return statistics.median(self.times(kind, chunk, concurrency))

    @property
    def ratio(self) -> float:
        default = (DEFAULT_CHUNK, DEFAULT_CONCURRENCY)
        return self.median("pipeline", *default) / self.median("bare", *default)

    def sweep(self) -> list[tuple[int, int, float, float]]:
        """(chunk, concurrency, pipeline seconds, bare seconds) for every combination tried."""
        combos = sorted(
            {(t["chunk"], t["concurrency"]) for t in self.trials if t["kind"] == "pipeline"}
        )
        return [
            (chunk, conc, self.median("pipeline", chunk, conc), self.median("bare", chunk, conc))
            for chunk, conc in combos
            if self.times("bare", chunk, conc)
        ]

    def best(self) -> tuple[int, int, float]:
        chunk, conc, seconds, _ = min(self.sweep(), key=lambda row: row[2])
        return chunk, conc, seconds

    def targets(self) -> list[tuple[str, str, bool]]:
        return [
            (
                f"load overhead ≤ {TARGET_RATIO}x the bare httpx loop",
                f"{self.ratio:.2f}x",
                self.ratio <= TARGET_RATIO,
            )
        ]

    def lines(self) -> list[str]:
        default = (DEFAULT_CHUNK, DEFAULT_CONCURRENCY)
        out = [
            f"{self.products:,} products, chunks of {DEFAULT_CHUNK}, {DEFAULT_CONCURRENCY} in "
            f"flight, median of {ROUNDS} alternating rounds [load {self.load}]:",
            f"  pipeline load (Prefect task per chunk, state commit): "
            f"{self.median('pipeline', *default):6.2f} s",
            f"  bare httpx loop:                                      "
            f"{self.median('bare', *default):6.2f} s",
            f"  the same task runs doing nothing (Prefect's floor):   "
            f"{self.median('prefect', *default):6.2f} s",
            f"  ratio {self.ratio:.2f}x",
            "  CPU seconds (client, Prefect server incl. its digest afterwards, sandbox):",
            *[
                f"    {kind:<9} " + ", ".join(f"{v:.2f}" for v in self.cpu(kind, *default))
                for kind in ("bare", "prefect", "pipeline")
            ],
            "  sweep (chunk, concurrency: pipeline s / bare s, products/s):",
        ]
        out += [
            f"    {chunk:>5}, {conc}: {p:6.2f} / {b:6.2f}  {self.products / p:9,.0f}/s"
            for chunk, conc, p, b in self.sweep()
        ]
        chunk, conc, seconds = self.best()
        out.append(f"  best: chunk_size {chunk}, max_concurrency {conc} ({seconds:.2f} s)")
        return out


def plan_trials(sweep: bool) -> list[dict[str, Any]]:
    trials = []
    for _ in range(ROUNDS):
        for kind in ("bare", "prefect", "pipeline"):
            trials.append(
                {"kind": kind, "chunk": DEFAULT_CHUNK, "concurrency": DEFAULT_CONCURRENCY}
            )
    if sweep:
        combos = {(c, DEFAULT_CONCURRENCY) for c in SWEEP_CHUNKS}
        combos |= {(DEFAULT_CHUNK, n) for n in SWEEP_CONCURRENCY}
        combos |= {(2000, n) for n in (2, 8)}
        combos.discard((DEFAULT_CHUNK, DEFAULT_CONCURRENCY))
        for chunk, conc in sorted(combos):
            for kind in ("bare", "pipeline"):
                trials.append({"kind": kind, "chunk": chunk, "concurrency": conc})
    return trials


def payload_of(dataset: data.Dataset, path: Path) -> None:
    """A payload like the pipeline's: every catalog product, sorted by SKU, random quantities."""
    import polars as pl

    catalog = pl.read_csv(dataset.catalog_csv, infer_schema=False)
    catalog.select(
        "id",
        "vendorSku",
        (pl.int_range(pl.len(), dtype=pl.Int64) * 7919 % 500).alias("quantity"),
    ).sort("vendorSku", "id", nulls_last=True).write_parquet(path)


def measure(
    root: Path, products: int = PRODUCTS, sweep: bool = True, api: str | None = None
) -> LoadResult:
    """Sandbox and Prefect server (unless `api` names one) in their own processes; trials in a child."""
    dataset = data.generate(root / f"products-{products}", products)
    result = LoadResult(products)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        payload_file = scratch / "payload.parquet"
        payload_of(dataset, payload_file)
        trials_file = scratch / "trials.json"
        trials_file.write_text(json.dumps(plan_trials(sweep)))
        with (
            prefect_server(scratch / "prefect")
            if api is None
            else nullcontext(PrefectServer(api, None)) as server,
            sandbox_server(dataset.catalog_json, 100_000, scratch) as sandbox,
        ):
            child = run_measured(
                python_module(
                    "benchmarks.load_overhead",
                    "--worker",
                    sandbox.url,
                    str(payload_file),
                    str(trials_file),
                ),
                env={
                    "PREFECT_API_URL": server.api,
                    "LIGHTSPEED_TOKEN": sandbox.token,
                    "BENCH_PREFECT_SERVER_PID": str(server.pid or ""),
                    "BENCH_SANDBOX_PID": str(sandbox.pid),
                },
            )
            if child.returncode != 0:
                raise RuntimeError(f"load benchmark failed:\n{child.output[-3000:]}")
            result.trials = last_json(child.output)["trials"]
            result.requests_seen = len(sandbox.requests())
    result.load = load_average()
    failed = [t for t in result.trials if t["failed"]]
    if failed:
        raise RuntimeError(f"chunks failed in {failed}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=PRODUCTS)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--worker", nargs=3, metavar=("URL", "PAYLOAD", "TRIALS"))
    args = parser.parse_args(argv)
    if args.worker:
        url, payload, trials = args.worker
        pids = {
            name: int(os.environ[variable])
            for name, variable in (
                ("server", "BENCH_PREFECT_SERVER_PID"),
                ("sandbox", "BENCH_SANDBOX_PID"),
            )
            if os.environ.get(variable)
        }
        results = run_trials(
            url,
            os.environ["LIGHTSPEED_TOKEN"],
            Path(payload),
            json.loads(Path(trials).read_text()),
            pids,
        )
        print(json.dumps({"trials": results}))
        return
    result = measure(args.root, args.products, sweep=not args.no_sweep)
    print("\n".join(result.lines()))
    for target, figure, met in result.targets():
        print(f"{'MET' if met else 'MISSED'} {target}: {figure}")


if __name__ == "__main__":
    main(sys.argv[1:])
