"""Many suppliers on one Prefect server and two workers: a first sync, then a 2 % cycle of each.

Usage: python -m benchmarks.suppliers [--suppliers 50] [--products 10000] [--worker-limit 3]

Each supplier has its own sandbox account (its own API on loopback, token and catalog) and its
configuration in one folder, all keeping state in one PostgreSQL database (a throwaway server,
tests/support/postgres.py) as tenants; `deploy --configs` registers them on a Prefect server (its own
process, on PostgreSQL too); two `process` workers run the flows, each at most --worker-limit
at once. Every account has account_limit 4. Pass 1 is every supplier's first sync (catalog
read, every product sent, read-back); pass 2 changes 2 % of each feed and runs every supplier
again. Each pass triggers all runs at once and ends when the last one does. Writes its section
of docs/benchmarks.md (between its markers) unless --no-doc.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from benchmarks.doc_sections import DocSection
from benchmarks.machine import describe, load_average
from benchmarks.processes import BIN, QUIET_ENV, ROOT, _process, prefect_server

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- suppliers:begin -->", "<!-- suppliers:end -->"
SECTION = DocSection(BEGIN, END)
POOL = "inventory-sync"
ACCOUNT_LIMIT = 4
CONFIG = """
    [lightspeed]
    base_url = "{base_url}"
    token_secret = "lightspeed-token-{tenant}"
    account_limit = {limit}
    timeout_seconds = 60

    [[warehouses]]
    name = "main"
    kind = "csv"
    path = "feeds/{tenant}.csv"
    sku_column = "sku"
    quantity_column = "qty"

    [state]
    url = "{state_url}"
    tenant = "{tenant}"
"""


@dataclass
class Pass:
    name: str
    seconds: float = 0.0
    runs: list[dict[str, Any]] = field(default_factory=list)  # name, seconds, state, worker
    load: str = ""

    def durations(self) -> list[float]:
        return sorted(r["seconds"] for r in self.runs)

    def line(self) -> str:
        d = self.durations()
        return (
            f"{self.name}: {self.seconds:.0f} s for {len(self.runs)} runs; per supplier median "
            f"{statistics.median(d):.1f} s, p90 {d[int(0.9 * (len(d) - 1))]:.1f} s, "
            f"max {d[-1]:.1f} s [load {self.load}]"
        )


@dataclass
class SuppliersResult:
    suppliers: int
    products: int
    worker_limit: int
    passes: list[Pass] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    peak_in_flight: int = 0
    exact: bool = False
    started: str = ""


def pid_of(tenant: str, sku: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{tenant}/{sku}"))


def write_feed(folder: Path, tenant: str, quantities: dict[str, int]) -> None:
    text = "sku,qty\n" + "".join(f"{s},{q}\n" for s, q in quantities.items())
    (folder / "feeds" / f"{tenant}.csv").write_text(text)


def measure(suppliers: int, products: int, worker_limit: int, root: Path) -> SuppliersResult:
    """Start everything, run the two passes, check every account, stop everything."""
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from postgres import PostgresServer  # type: ignore[import-not-found]
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server.setup import SetupOptions, set_up_server
    from flows.server.suppliers import TEMPLATE_FILE
    from sandbox.server import SandboxServer
    from tasks.state.location import StateLocation
    from tasks.state.store import StateStore

    result = SuppliersResult(suppliers, products, worker_limit, started=_now())
    tenants = [f"supplier-{i:02d}" for i in range(suppliers)]
    skus = [f"SKU-{i:05d}" for i in range(products)]
    with ExitStack() as stack:
        database = PostgresServer().start()
        stack.callback(database.stop)
        state_url = database.create_database("state")
        database.create_database("prefect")
        server = stack.enter_context(
            prefect_server(
                root / "prefect",
                {
                    "PREFECT_SERVER_DATABASE_CONNECTION_URL": database.url(
                        "prefect", "postgresql+asyncpg"
                    )
                },
            )
        )
        sandboxes: dict[str, Any] = {}
        for tenant in tenants:
            catalog = [
                {"id": pid_of(tenant, s), "vendorSku": s, "name": s,
                 "inventory": {"isInventoryTrackingEnabled": True}, "quantity": 0}
                for s in skus
            ]  # fmt: skip
            sandbox = SandboxServer(products=catalog, token=f"token-{tenant}").start()
            stack.callback(sandbox.stop)
            sandboxes[tenant] = sandbox
        folder = root / "suppliers"
        (folder / "feeds").mkdir(parents=True)
        quantities = {
            t: {s: (i * 7 + n) % 50 for i, s in enumerate(skus)} for n, t in enumerate(tenants)
        }
        for tenant in tenants:
            config = CONFIG.format(
                base_url=sandboxes[tenant].url,
                tenant=tenant,
                limit=ACCOUNT_LIMIT,
                state_url=state_url,
            )
            (folder / f"{tenant}.toml").write_text(textwrap.dedent(config))
            write_feed(folder, tenant, quantities[tenant])
        with temporary_settings({PREFECT_API_URL: server.api}):
            for tenant in tenants:
                Secret(value=f"token-{tenant}").save(f"lightspeed-token-{tenant}", overwrite=True)
        template = root / "prefect.yaml"
        document = yaml.safe_load(TEMPLATE_FILE.read_text())
        for deployment in document["deployments"]:
            for schedule in deployment.get("schedules", []):
                schedule["active"] = False  # only the benchmark starts runs
        template.write_text(yaml.safe_dump(document, sort_keys=False))
        options = SetupOptions(config_path=folder, suppliers=True, prefect_file=template)
        set_up_server(server.api, options, say=lambda line: None)
        with SyncPrefectClient(server.api) as client:
            deployments = {
                t: client.read_deployment_by_name(f"inventory-sync/{t}-every-15-minutes").id
                for t in tenants
            }
        for name in ("worker-a", "worker-b"):
            argv = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
            argv += ["--name", name, "--limit", str(worker_limit)]
            env = {**QUIET_ENV, "PREFECT_API_URL": server.api, "PREFECT_WORKER_QUERY_SECONDS": "2"}
            stack.enter_context(_process(name, argv, env, root / f"{name}.log"))

        result.passes.append(_pass("first sync", server.api, deployments))
        print(result.passes[-1].line(), flush=True)
        for n, tenant in enumerate(tenants):  # 2 % of each feed changes
            changed = {s: q + 1 for s, q in list(quantities[tenant].items())[n % 50 :: 50]}
            quantities[tenant] |= changed
            write_feed(folder, tenant, quantities[tenant])
        result.passes.append(_pass("2 % cycle", server.api, deployments))
        print(result.passes[-1].line(), flush=True)

        exact = True
        for tenant in tenants:
            want = {pid_of(tenant, s): q for s, q in quantities[tenant].items()}
            exact &= sandboxes[tenant].quantities() == want
            exact &= (
                dict(StateStore(StateLocation(state_url, tenant)).last_pushed().iter_rows()) == want
            )
            peak = sandboxes[tenant].max_in_flight().get(f"token-{tenant}", 0)
            result.peak_in_flight = max(result.peak_in_flight, peak)
            for request in sandboxes[tenant].requests():
                result.requests[request.method] = result.requests.get(request.method, 0) + 1
        result.exact = exact
    return result


def _pass(name: str, api: str, deployments: dict[str, Any]) -> Pass:
    """Trigger every supplier's run at once; wait for the last; each run's time from Prefect."""
    from prefect.client.orchestration import SyncPrefectClient

    measured = Pass(name, load=load_average())
    started = time.perf_counter()
    with SyncPrefectClient(api) as client:
        runs = [client.create_flow_run_from_deployment(d).id for d in deployments.values()]
        pending = set(runs)
        while pending:
            for run_id in list(pending):
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    pending.discard(run_id)
                    begun = run.start_time or run.expected_start_time
                    measured.runs.append({
                        "name": run.name, "state": run.state.type.value,
                        "seconds": (run.end_time - begun).total_seconds() if run.end_time and begun else 0.0,
                    })  # fmt: skip
            if time.perf_counter() - started > 3600:
                raise TimeoutError(f"{len(pending)} run(s) still going after an hour")
            time.sleep(1)
    measured.seconds = time.perf_counter() - started
    failed = [r for r in measured.runs if r["state"] != "COMPLETED"]
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) did not complete: {failed[:3]}")
    return measured


def section(result: SuppliersResult, command: str) -> str:
    """The benchmark's section of docs/benchmarks.md."""
    lines = [
        BEGIN,
        "## 6. Many suppliers on shared workers",
        "",
        f"`{command}` on {result.started}; {describe()}.",
        "",
        f"{result.suppliers} suppliers x {result.products:,} products, each its own sandbox account "
        "(API on loopback, token in a Prefect Secret block), all in one PostgreSQL state database "
        "as tenants, deployed from one folder with `inventory-sync deploy --configs`; one Prefect "
        f"server (on PostgreSQL) and two `process` workers, each running at most "
        f"{result.worker_limit} flow runs at once; `account_limit = {ACCOUNT_LIMIT}` per account, "
        "defaults otherwise (500 products per PUT, up to 4 PUTs in flight per run, read-back 50 pages). "
        "Each pass triggers every supplier's run at once; per-supplier time is the flow run's, "
        "from Running to its end, as Prefect recorded it.",
        "",
        "| pass | total s | per supplier: median s | p90 s | max s | load at start |",
        "|---|---|---|---|---|---|",
    ]
    for p in result.passes:
        d = p.durations()
        lines.append(
            f"| {p.name} | **{p.seconds:.0f}** | {statistics.median(d):.1f} | "
            f"{d[int(0.9 * (len(d) - 1))]:.1f} | {d[-1]:.1f} | {p.load} |"
        )
    shown = ", ".join(f"{n:,} {m}" for m, n in sorted(result.requests.items()))
    lines += [
        "",
        f"Requests the accounts received over both passes: {shown}. The most any account had "
        f"in flight at once: {result.peak_in_flight} (its limit {ACCOUNT_LIMIT}). Every "
        f"account and every tenant's state held exactly the expected quantities afterwards: "
        f"{'yes' if result.exact else '**no**'}.",
        END,
    ]
    return "\n".join(lines) + "\n"


def keep_section(previous: str, doc: Path = DOC) -> None:
    """For benchmarks/runner.py: put back this section after `make bench` rewrote the doc."""
    SECTION.keep(previous, doc)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suppliers", type=int, default=50)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--worker-limit", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.suppliers " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="inventory-sync-suppliers-") as folder:
        result = measure(args.suppliers, args.products, args.worker_limit, Path(folder))
    text = section(result, command.strip())
    print(text)
    if not args.no_doc:
        SECTION.write(text)


if __name__ == "__main__":
    main()
