"""One account, many runs at once, 5-second access tokens: no run fails, no refresh token reused.

Two configurations (two suppliers, their own tenants) share one Lightspeed account and one state
database; the first also has a scheduled deployment and an arrival deployment, queued behind one
another by their work pool's limit of one, as `inventory-sync deploy` sets it up. Each lane
starts its next run when its last one ended, for AUTH_SOAK_SECONDS (45 s by default; the issue's
10 minutes: AUTH_SOAK_SECONDS=600). Every run is its own process, started by a Prefect worker.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from builders import pid, product
from cli_runs import CLI, cli_env
from process_workers import Machine, create_pool, deploy, wait_for

from devstack.local_stack import prefect_client
from sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, TOKEN_PATH
from sandbox.server import SandboxServer
from tasks.state.tokens import new_key

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("AUTH_SOAK_SECONDS", "45"))
TOKEN_SECONDS = 5
KEY = new_key()
SECRETS = {"LS_CLIENT_SECRET": DEFAULT_CLIENT_SECRET, "LS_TOKEN_KEY": KEY}
SKUS = {"brand-a": [f"A{i}" for i in range(12)], "brand-b": [f"B{i}" for i in range(12)]}
CONFIG = """
    [lightspeed]
    base_url = "{base_url}"
    account = "acme"
    chunk_size = 3
    max_concurrency = 2
    retry_backoff_seconds = 0.05
    read_backoff_seconds = 0.05
    timeout_seconds = 10

    [lightspeed.auth]
    kind = "oauth"
    token_url = "{base_url}{token_path}"
    client_id = "{client_id}"
    client_secret = {{ env = "LS_CLIENT_SECRET" }}
    encryption_key = {{ env = "LS_TOKEN_KEY" }}

    [catalog]
    absent = "keep"  # the other supplier's products are not ours to zero

    [[warehouses]]
    name = "east"
    kind = "csv"
    path = "feeds/{tenant}.csv"
    sku_column = "sku"
    quantity_column = "qty"

    [state]
    url = "{state_url}"
    tenant = "{tenant}"

    [guards]
    max_zeroed_share = 1.0
    max_units_drop_share = 1.0
    read_back_pages = 1
"""


@dataclass
class Lane:
    """One source of runs: a deployment, the machine whose worker runs it, what comes first."""

    name: str
    deployment: UUID
    machine: Machine
    prepare: Callable[[int], dict[str, object]]  # before run n: the feed, then its parameters
    scheduled: bool = False  # created Scheduled a moment ahead, as the scheduler does
    runs: list[UUID] = field(default_factory=list)


@dataclass
class Account:
    api: str
    root: Path
    sandbox: SandboxServer
    configs: dict[str, Path]
    feeds: dict[str, dict[str, int]] = field(default_factory=dict)
    stamp: float = 0.0

    def feed(self, tenant: str, n: int) -> None:
        quantities = {s: (n * 7 + i) % 50 for i, s in enumerate(SKUS[tenant])}
        temporary = self.root / "feeds" / f".{tenant}.tmp"
        temporary.write_text("sku,qty\n" + "".join(f"{s},{q}\n" for s, q in quantities.items()))
        path = self.root / "feeds" / f"{tenant}.csv"
        temporary.replace(path)  # a run never reads half a feed
        self.stamp = max(self.stamp + 1, time.time())  # newer each time, even within a second
        os.utime(path, (self.stamp, self.stamp))
        self.feeds[tenant] = quantities


@pytest.fixture
def account(prefect_api, tmp_path) -> Iterator[Account]:
    import subprocess

    products = [product(s) for skus in SKUS.values() for s in skus]
    sandbox = SandboxServer(products=products, access_token_seconds=TOKEN_SECONDS).start()
    (tmp_path / "feeds").mkdir()
    state_url = f"sqlite:///{tmp_path / 'shared-state' / 'state.sqlite3'}"
    configs = {}
    for tenant in SKUS:
        text = CONFIG.format(
            base_url=sandbox.url,
            token_path=TOKEN_PATH,
            client_id=DEFAULT_CLIENT_ID,
            state_url=state_url,
            tenant=tenant,
        )
        configs[tenant] = tmp_path / f"{tenant}.toml"
        configs[tenant].write_text(textwrap.dedent(text))
    stored = subprocess.run(
        [*CLI, "auth", "--config", str(configs["brand-a"])],
        input=sandbox.oauth.grant(),
        env=cli_env(**SECRETS),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert stored.returncode == 0, stored.stdout + stored.stderr
    try:
        yield Account(prefect_api, tmp_path, sandbox, configs)
    finally:
        sandbox.stop()


@pytest.mark.timeout(SOAK_SECONDS + 600)  # the suite's 300 s, plus the soak itself
def test_two_configs_and_two_deployments_of_one_share_an_account_for_a_while(account):
    from prefect.client.schemas.actions import WorkPoolUpdate

    api = account.api
    create_pool(api, "auth-a", ["auth-a"])
    create_pool(api, "auth-b", ["auth-b"])
    with prefect_client(api) as client:
        client.update_work_pool("auth-a", WorkPoolUpdate(concurrency_limit=1))
    a_path, b_path = str(account.configs["brand-a"]), str(account.configs["brand-b"])
    scheduled = deploy(api, "a-every-15-minutes", "auth-a", {"config_path": a_path}, [])
    arrival = deploy(api, "a-on-feed-arrival", "auth-a", {"config_path": a_path}, [])
    other = deploy(api, "b-every-15-minutes", "auth-b", {"config_path": b_path}, [])
    machine_a = Machine("auth-machine-a", account.root / "a", "auth-a", api, SECRETS, "auth-a")
    machine_b = Machine("auth-machine-b", account.root / "b", "auth-b", api, SECRETS, "auth-b")
    account.feed("brand-a", 0)
    account.feed("brand-b", 0)

    def arrived(n: int) -> dict[str, object]:
        account.feed("brand-a", n + 1)
        return {"warehouses": ["east"]}  # as the arrival trigger names what changed

    def next_b(n: int) -> dict[str, object]:
        account.feed("brand-b", n + 1)
        return {}

    lanes = [
        Lane("scheduled", scheduled, machine_a, lambda n: {}, scheduled=True),
        Lane("arrival", arrival, machine_a, arrived),
        Lane("other config", other, machine_b, next_b),
    ]
    try:
        machine_a.start()
        machine_b.start()
        soak(api, lanes, SOAK_SECONDS)
        finished = {lane.name: [wait_for(api, r) for r in lane.runs] for lane in lanes}
    finally:
        machine_a.stop()
        machine_b.stop()

    failed = [
        f"{lane}: {r.name} {r.state.name}: {r.state.message}"
        for lane, runs in finished.items()
        for r in runs
        if not r.state.is_completed()
    ]
    assert failed == []
    total = sum(len(runs) for runs in finished.values())
    # on a busy 2-core box a run takes 10-20 s from its worker's cold start: 45 s gives each
    # lane one or two runs, all overlapping; 600 s gives each lane dozens
    assert all(runs for runs in finished.values()) and total >= 4, finished
    stats = account.sandbox.oauth.stats()
    assert stats.reused == 0 and stats.rejected == 0, stats
    assert stats.refreshes >= total  # each run process refreshed at least once
    wanted = {pid(s): q for quantities in account.feeds.values() for s, q in quantities.items()}
    assert account.sandbox.quantities() == wanted
    print(
        f"\n{SOAK_SECONDS:.0f}s soak: {total} runs "
        f"({', '.join(f'{k} {len(v)}' for k, v in finished.items())}), "
        f"{stats.refreshes} refreshes, {stats.reused} refresh tokens presented twice"
    )


def soak(api: str, lanes: list[Lane], seconds: float) -> None:
    """Keep one run of each lane going until the time is up (the last ones may still run)."""
    from prefect.states import Scheduled

    deadline = time.monotonic() + seconds
    with prefect_client(api) as client:
        while time.monotonic() < deadline:
            for lane in lanes:
                if lane.runs:
                    state = client.read_flow_run(lane.runs[-1]).state
                    if state is None or not state.is_final():
                        continue
                parameters = lane.prepare(len(lane.runs))
                at = datetime.now(UTC) + timedelta(seconds=2 if lane.scheduled else 0)
                run = client.create_flow_run_from_deployment(
                    lane.deployment,
                    parameters=parameters or None,
                    state=Scheduled(scheduled_time=at),
                    work_queue_name=lane.machine.queue,
                    job_variables={"working_dir": str(lane.machine.folder)},
                )
                lane.runs.append(UUID(str(run.id)))
            time.sleep(0.5)  # polling the server for run states
