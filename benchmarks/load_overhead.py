"""Benchmark 3: a full sync's load through Prefect vs a bare httpx loop, same requests, same sandbox.

Usage: python -m benchmarks.load_overhead [--products 1000000] [--no-sweep]
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

from benchmarks import dataset as data
from benchmarks.machine import load_average
from benchmarks.processes import (
    PrefectServer,
    cpu_seconds,
    last_json,
    prefect_server,
    python_module,
    run_measured,
    sandbox_server,
    settle,
)
from benchmarks.transform import DEFAULT_ROOT

PRODUCTS = 1_000_000
# the target's request size (the platform's cap may be that low); lightspeed.request_size
# defaults to 500. max_concurrency and chunk_size are the configuration's defaults.
DEFAULT_REQUEST, DEFAULT_CONCURRENCY = 250, 4
ROUNDS = 3  # bare and pipeline alternate, so a noisy moment hurts both alike
SWEEP_REQUESTS = (100, 500, 1000, 2000)
SWEEP_CONCURRENCY = (2, 8)
TARGET_RATIO = 2.0
TARGET_TASK_RUNS = 300


def bare_loop(url: str, token: str, requests: list[Any], concurrency: int) -> None:
    """PUT each request with a plain httpx client and a thread pool: the cost of the HTTP alone."""
    import httpx

    from tasks.lightspeed.chunks import chunk_body

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=url, headers=headers, limits=limits, timeout=60) as client:

        def put(request: Any) -> None:
            client.put("/inventory", content=chunk_body(request)).raise_for_status()

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(put, requests))


def prefect_floor(chunks: list[Any]) -> None:
    """As many Prefect task runs as the load makes, with the same chunks, that send nothing."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    from tasks.lightspeed.load import CHUNKS_IN_FLIGHT

    @task(name="noop-chunk", cache_policy=NO_CACHE)
    def noop_chunk(chunk: Any, number: int) -> int:
        return int(chunk.height)

    with ThreadPoolTaskRunner(max_workers=CHUNKS_IN_FLIGHT) as runner:  # type: ignore[var-annotated]
        futures = [
            runner.submit(noop_chunk, parameters={"chunk": c, "number": n})
            for n, c in enumerate(chunks, start=1)
        ]
        for future in futures:
            future.result()


def task_runs_of(flow_run: str) -> int:
    """How many task runs the Prefect server holds for this flow run."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    response = httpx.post(
        f"{PREFECT_API_URL.value()}/task_runs/count",
        json={"task_runs": {"flow_run_id": {"any_": [flow_run]}}},
        timeout=60,
    )
    response.raise_for_status()
    return int(response.json())


def run_trials(
    url: str,
    token: str,
    payload_file: Path,
    trials: list[dict[str, Any]],
    pids: dict[str, int],
) -> list[dict[str, Any]]:
    """In the child, each trial in a Prefect flow run of its own: seconds, CPU, task runs made.

    `pids` names the other processes whose CPU to count (server, sandbox); this one is "client".
    """
    pids = {"client": os.getpid(), **pids}
    import polars as pl
    from prefect import flow
    from prefect.runtime import flow_run
    from pydantic import SecretStr

    from tasks.config.settings import LightspeedSettings
    from tasks.lightspeed.chunks import chunk_size_for, split_into_chunks
    from tasks.lightspeed.client import StaticToken
    from tasks.lightspeed.load import load
    from tasks.state.location import StateLocation
    from tasks.state.store import StateStore

    payload = pl.read_parquet(payload_file)

    def one_trial(number: int, trial: dict[str, Any]) -> dict[str, Any]:
        request, concurrency = int(trial["request"]), int(trial["concurrency"])
        settings = LightspeedSettings(
            base_url=url, request_size=request, max_concurrency=concurrency, timeout_seconds=60
        )
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        failed = chunks = 0
        if trial["kind"] == "bare":
            bare_loop(url, token, split_into_chunks(payload, request), concurrency)
        elif trial["kind"] == "prefect":
            size = chunk_size_for(payload.height, settings)
            prefect_floor(split_into_chunks(payload, size))
        else:
            with tempfile.TemporaryDirectory() as folder:
                state = StateLocation.of(folder)
                with StateStore(state).exclusive("bench"):
                    outcome = load(payload, settings, StaticToken(SecretStr(token)), state, "bench")
            failed, chunks = len(outcome.failed), outcome.chunks
        seconds = time.perf_counter() - started
        waited = settle(pids.get("server"))
        cpu = {f"cpu_{n}": cpu_seconds(p) - cpu_before[n] for n, p in pids.items()}
        figures = {"seconds": seconds, "failed": failed, "chunks": chunks, "settle": waited}
        return {**trial, **figures, **cpu, "flow_run": str(flow_run.id)}

    # A flow run per trial, so that its task runs are counted by their flow run. Not by a tag:
    # a task run with a tag asks the server for that tag's concurrency slots (a round trip
    # each, start and end), which the sync's own task runs, untagged, never pay.
    trial_flow = flow(name="load-benchmark-trial", flow_run_name="trial {number}")(one_trial)

    @flow(name="load-benchmark")
    def trials_flow() -> list[dict[str, Any]]:
        results = [trial_flow(number, trial) for number, trial in enumerate(trials)]
        for result in results:
            result["task_runs"] = task_runs_of(result.pop("flow_run"))
        return results

    return trials_flow()


@dataclass
class LoadResult:
    products: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    requests_seen: int = 0
    load: str = ""

    def _matching(self, kind: str, request: int, concurrency: int) -> list[dict[str, Any]]:
        key = (kind, request, concurrency)
        return [t for t in self.trials if (t["kind"], t["request"], t["concurrency"]) == key]

    def times(self, kind: str, request: int, concurrency: int) -> list[float]:
        return [t["seconds"] for t in self._matching(kind, request, concurrency)]

    def cpu(self, kind: str, request: int, concurrency: int) -> tuple[float, float, float]:
        """Median CPU seconds of (client, Prefect server, sandbox) over the matching trials."""
        matching = self._matching(kind, request, concurrency)
        client, server, sandbox = (
            statistics.median(float(t.get(f"cpu_{name}", 0.0)) for t in matching)
            if matching
            else 0.0
            for name in ("client", "server", "sandbox")
        )
        return client, server, sandbox

    def median(self, kind: str, request: int, concurrency: int) -> float:
        return statistics.median(self.times(kind, request, concurrency))

    def task_runs(self, kind: str = "pipeline") -> int:
        """Task runs the server recorded for one trial of `kind` at the default (the most seen)."""
        return max(t["task_runs"] for t in self._matching(kind, *self.default))

    @property
    def default(self) -> tuple[int, int]:
        return DEFAULT_REQUEST, DEFAULT_CONCURRENCY

    @property
    def chunks(self) -> int:
        return int(self._matching("pipeline", *self.default)[0]["chunks"])

    @property
    def ratio(self) -> float:
        return self.median("pipeline", *self.default) / self.median("bare", *self.default)

    def sweep(self) -> list[tuple[int, int, float, float]]:
        """(request size, concurrency, pipeline seconds, bare seconds) for every combination tried."""
        combos = sorted(
            {(t["request"], t["concurrency"]) for t in self.trials if t["kind"] == "pipeline"}
        )
        return [
            (request, conc, self.median("pipeline", request, conc), self.median("bare", request, conc))
            for request, conc in combos
            if self.times("bare", request, conc)
        ]  # fmt: skip

    def best(self) -> tuple[int, int, float]:
        request, conc, seconds, _ = min(self.sweep(), key=lambda row: row[2])
        return request, conc, seconds

    def targets(self) -> list[tuple[str, str, bool]]:
        size = f"{self.products / 1e6:g}M" if self.products >= 1_000_000 else f"{self.products:,}"
        return [
            (
                f"full sync of {size} products at request_size {DEFAULT_REQUEST} ≤ "
                f"{TARGET_RATIO:g}x the bare httpx loop",
                f"{self.ratio:.2f}x ({self.median('pipeline', *self.default):.1f} s vs "
                f"{self.median('bare', *self.default):.1f} s)",
                self.ratio <= TARGET_RATIO,
            ),
            (
                f"full sync of {size} products makes ≤ {TARGET_TASK_RUNS} task runs",
                f"{self.task_runs():,} task runs ({self.chunks} chunks)",
                self.task_runs() <= TARGET_TASK_RUNS,
            ),
        ]

    def lines(self) -> list[str]:
        default = self.default
        out = [
            f"{self.products:,} products, requests of {DEFAULT_REQUEST}, {DEFAULT_CONCURRENCY} in "
            f"flight, median of {ROUNDS} alternating rounds [load {self.load}]:",
            f"  pipeline load ({self.chunks} chunks, {self.task_runs()} task runs on the server): "
            f"{self.median('pipeline', *default):6.2f} s",
            f"  bare httpx loop:                               "
            f"{self.median('bare', *default):6.2f} s",
            f"  as many task runs doing nothing:               "
            f"{self.median('prefect', *default):6.2f} s",
            f"  ratio {self.ratio:.2f}x",
            "  CPU seconds (client, Prefect server incl. its digest afterwards, sandbox):",
            *[
                f"    {kind:<9} " + ", ".join(f"{v:.2f}" for v in self.cpu(kind, *default))
                for kind in ("bare", "prefect", "pipeline")
            ],
            "  sweep (request size, concurrency: pipeline s / bare s, products/s):",
        ]
        out += [
            f"    {request:>5}, {conc}: {p:6.2f} / {b:6.2f}  {self.products / p:9,.0f}/s"
            for request, conc, p, b in self.sweep()
        ]
        return out


def plan_trials(sweep: bool) -> list[dict[str, Any]]:
    trials = []
    for _ in range(ROUNDS):
        for kind in ("bare", "prefect", "pipeline"):
            trials.append(
                {"kind": kind, "request": DEFAULT_REQUEST, "concurrency": DEFAULT_CONCURRENCY}
            )
    if sweep:
        combos = {(r, DEFAULT_CONCURRENCY) for r in SWEEP_REQUESTS}
        combos |= {(DEFAULT_REQUEST, n) for n in SWEEP_CONCURRENCY}
        for request, conc in sorted(combos):
            for kind in ("bare", "pipeline"):
                trials.append({"kind": kind, "request": request, "concurrency": conc})
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
                timeout=1800,
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
