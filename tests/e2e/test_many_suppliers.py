"""Twenty suppliers on shared workers: one folder of configurations, one database, one limit per account.

Each supplier has its own sandbox account (its own API, token and 2,000 products) and its token
in a Prefect Secret block. `inventory-sync deploy --configs` registers every supplier's deployments from the
folder; two `process` workers run them all; every account allows 4 requests in flight, which a
run (two chunks at once, each with 8 PUTs in flight) would exceed on its own.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import yaml
from builders import pid, product
from process_workers import Machine, wait_for

from devstack.local_stack import prefect_client
from flows.server.setup import SetupOptions, set_up_server
from flows.server.suppliers import TEMPLATE_FILE
from sandbox.server import Fault, SandboxServer
from tasks.state.location import StateLocation
from tasks.state.store import StateStore

pytestmark = pytest.mark.slow
pytest_plugins = ["prefect_server"]

SUPPLIERS = [f"supplier-{i:02d}" for i in range(20)]
SHARED = ["shared-east", "shared-west"]  # two configurations on one account
PRODUCTS = 2_000
ACCOUNT_LIMIT = 4
POOL = "inventory-sync"  # the templates' pool
CONFIG = """
    [lightspeed]
    base_url = "{base_url}"
    token_secret = "lightspeed-token-{account}"
    account = "{account}"
    account_limit = {limit}
    chunk_size = {chunk}
    request_size = {request}
    max_concurrency = {concurrency}
    retry_backoff_seconds = 0.1
    read_backoff_seconds = 0.1
    timeout_seconds = 30

    [catalog]
    absent = "{absent}"

    [[warehouses]]
    name = "main"
    kind = "csv"
    path = "feeds/{tenant}.csv"
    sku_column = "sku"
    quantity_column = "qty"

    [state]
    url = "{state_url}"
    tenant = "{tenant}"

    [guards]
    read_back_pages = 2
"""


def skus(account: str) -> list[str]:
    return [f"{account.upper()}-{i:04d}" for i in range(PRODUCTS)]


def quantity(sku: str) -> int:
    return int(sku[-4:]) % 97


@dataclass
class Suppliers:
    api_url: str
    state_url: str
    sandboxes: dict[str, SandboxServer]  # by account
    deployments: dict[str, UUID]  # every-15-minutes deployment by tenant
    machines: list[Machine]

    def trigger(self, tenants: list[str]) -> list[UUID]:
        """One run of each tenant's 15-minute deployment; a busy test server's 503 is retried."""
        from prefect.exceptions import PrefectHTTPStatusError

        batch = uuid4().hex  # the same key on a retry gives the run the server may have made
        runs = []
        with prefect_client(self.api_url) as client:
            for tenant in tenants:
                for attempt in range(5):
                    try:
                        run = client.create_flow_run_from_deployment(
                            self.deployments[tenant], idempotency_key=f"{batch}-{tenant}"
                        )
                        break
                    except PrefectHTTPStatusError as exc:
                        if exc.response.status_code < 500 or attempt == 4:
                            raise
                        time.sleep(2)
                runs.append(UUID(str(run.id)))
        return runs


def write_folder(root: Path, sandboxes: dict[str, SandboxServer], state_url: str) -> Path:
    folder = root / "suppliers"
    (folder / "feeds").mkdir(parents=True)
    # (tenant, account, products per chunk, per PUT, PUTs in flight per chunk, catalog.absent);
    # two chunks are in flight at once, so a run alone wants 16 requests in flight, or 8
    tenants = [(t, t, 1000, 100, 8, "zero") for t in SUPPLIERS]
    tenants += [(t, "shared", 500, 25, 4, "keep") for t in SHARED]
    for tenant, account, chunk, request, concurrency, absent in tenants:
        config = CONFIG.format(
            base_url=sandboxes[account].url, account=account, limit=ACCOUNT_LIMIT, chunk=chunk,
            request=request, concurrency=concurrency, absent=absent, state_url=state_url,
            tenant=tenant,
        )  # fmt: skip
        (folder / f"{tenant}.toml").write_text(textwrap.dedent(config))
        listed = skus(account)
        if tenant in SHARED:  # each lists its half of the account's catalog
            listed = listed[SHARED.index(tenant) :: 2]
        feed = "sku,qty\n" + "".join(f"{s},{quantity(s)}\n" for s in listed)
        (folder / "feeds" / f"{tenant}.csv").write_text(feed)
    return folder


def paused_template(root: Path) -> Path:
    """deployments/prefect.yaml with its schedules off: no run starts that the test did not ask.

    Without its arrival deployment too: no watcher runs here, and tests/flows/server/test_suppliers.py checks
    that each supplier gets one, its trigger matching that supplier's configuration.
    """
    document = yaml.safe_load(TEMPLATE_FILE.read_text())
    document["deployments"] = [d for d in document["deployments"] if not d.get("triggers")]
    for deployment in document["deployments"]:
        for schedule in deployment.get("schedules", []):
            schedule["active"] = False
    path = root / "prefect.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def suppliers(prefect_on_postgres, postgres, tmp_path_factory) -> Iterator[Suppliers]:
    """Every supplier's deployments on a Prefect server of their own, on PostgreSQL."""
    from prefect.blocks.system import Secret

    prefect_api = prefect_on_postgres

    root = tmp_path_factory.mktemp("many-suppliers")
    state_url = postgres.create_database("suppliers")
    accounts = [*SUPPLIERS, "shared"]
    sandboxes = {
        a: SandboxServer(
            products=[product(s, id=pid(f"{a}/{s}")) for s in skus(a)], token=f"token-{a}"
        ).start()
        for a in accounts
    }
    machines: list[Machine] = []
    try:
        for account in accounts:
            Secret(value=f"token-{account}").save(f"lightspeed-token-{account}", overwrite=True)
        folder = write_folder(root, sandboxes, state_url)
        options = SetupOptions(
            config_path=folder, suppliers=True, prefect_file=paused_template(root)
        )
        said: list[str] = []
        report = set_up_server(prefect_api, options, say=said.append)
        assert len(report.deployments) == 2 * (len(SUPPLIERS) + len(SHARED))
        assert (
            f"concurrency limit 'lightspeed-account-shared': created, {ACCOUNT_LIMIT} request(s) in flight"
            in said
        )
        assert "work pool 'inventory-sync': created (type process, concurrency limit none)" in said
        with prefect_client(prefect_api) as client:
            ids = {
                t: client.read_deployment_by_name(f"inventory-sync/{t}-every-15-minutes").id
                for t in [*SUPPLIERS, *SHARED]
            }
        for name in ("worker-a", "worker-b"):
            machine = Machine(name, root / name, POOL, prefect_api, queue="default", limit=3)
            machines.append(machine.start())
        yield Suppliers(prefect_api, state_url, sandboxes, ids, machines)
    finally:
        for machine in machines:
            machine.stop()
        for sandbox in sandboxes.values():
            sandbox.stop()


@pytest.mark.timeout(900)  # twenty runs, six at a time on two cores: past the suite's 300 s
def test_twenty_suppliers_sync_exactly_on_two_workers_within_each_accounts_limit(suppliers):
    for tenant in SUPPLIERS:  # a PUT takes a while, as over the internet, so requests pile up
        suppliers.sandboxes[tenant].add_fault(Fault(delay=0.3, times=10_000))
    started = time.monotonic()
    runs = suppliers.trigger(SUPPLIERS)
    finished = [wait_for(suppliers.api_url, run, timeout=800) for run in runs]
    seconds = time.monotonic() - started
    failed = [(r.name, r.state.message) for r in finished if not r.state.is_completed()]
    assert failed == []

    peaks = {}
    for tenant in SUPPLIERS:
        sandbox = suppliers.sandboxes[tenant]
        expected = {pid(f"{tenant}/{s}"): quantity(s) for s in skus(tenant)}
        assert sandbox.quantities() == expected, tenant
        sent = [i for r in sandbox.requests() if r.method == "PUT" for i in r.product_ids]
        assert sorted(sent) == sorted(expected), f"{tenant}: each product sent exactly once"
        peaks[tenant] = sandbox.max_in_flight()[f"token-{tenant}"]
        pushed = StateStore(StateLocation(suppliers.state_url, tenant)).last_pushed()
        assert dict(pushed.iter_rows()) == expected, f"{tenant}: its own state, nobody else's"
    assert max(peaks.values()) <= ACCOUNT_LIMIT, peaks
    assert ACCOUNT_LIMIT in peaks.values(), peaks  # the limit was reached, so it held runs back
    took = {m.name: len(m.ran() & {str(r) for r in runs}) for m in suppliers.machines}
    assert sum(took.values()) == len(SUPPLIERS) and all(took.values()), took
    print(f"20 suppliers x {PRODUCTS} products in {seconds:.0f} s; runs per worker {took}")


def test_two_configurations_on_one_account_share_its_limit(suppliers):
    sandbox = suppliers.sandboxes["shared"]
    sandbox.add_fault(Fault(delay=0.5, times=10_000))  # slow PUTs, so the two loads overlap
    runs = suppliers.trigger(SHARED)
    finished = [wait_for(suppliers.api_url, run, timeout=900) for run in runs]
    assert [r.state.type.value for r in finished] == ["COMPLETED", "COMPLETED"], [
        r.state.message for r in finished
    ]
    assert sandbox.quantities() == {pid(f"shared/{s}"): quantity(s) for s in skus("shared")}
    east = {pid(f"shared/{s}") for s in skus("shared")[::2]}
    windows = {True: [], False: []}  # PUT arrival times of each configuration's products
    for request in sandbox.requests():
        if request.method == "PUT" and request.product_ids:
            windows[request.product_ids[0] in east].append(request.at)
    (first_east, last_east), (first_west, last_west) = (
        (min(windows[side]), max(windows[side])) for side in (True, False)
    )
    assert first_east < last_west and first_west < last_east, "the two loads did not overlap"
    assert sandbox.max_in_flight()["token-shared"] <= ACCOUNT_LIMIT  # 4 + 4 wanted, 4 allowed
