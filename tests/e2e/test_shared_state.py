"""Two machines, one state: runs of one supplier alternate between workers that share no folder.

Each "machine" is a Prefect `process` worker on its own queue, with its own Prefect home, and
its flow runs execute in its own folder (its copy of the config and of the feed, its reports).
The only things they share are the Prefect server, the sandbox API and the state database,
a real PostgreSQL: delta, the change guard and the run lock must work through it alone.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
from builders import TOKEN, pid, product
from process_workers import Machine, create_pool, deploy, first_to_end, wait_for

from devstack.local_stack import prefect_client
from sandbox.server import Fault, SandboxServer
from tasks.state.location import StateLocation
from tasks.state.store import StateStore

pytestmark = pytest.mark.slow

POOL = "two-machines"
N = 40
SKUS = [f"S{i:02d}" for i in range(N)]
HOLD_SECONDS = 200  # longer than any worker takes to start a run; cut short once it has
CONFIG = """
    [lightspeed]
    base_url = "{base_url}"
    chunk_size = 4
    max_concurrency = 2
    per_page = 10
    retry_backoff_seconds = 0.05
    read_backoff_seconds = 0.05
    timeout_seconds = {timeout_seconds}

    [[warehouses]]
    name = "east"
    kind = "csv"
    path = "feeds/east.csv"
    sku_column = "sku"
    quantity_column = "qty"

    [state]
    url = "{state_url}"
    tenant = "acme"
    password = {{ env = "STATE_DB_PASSWORD" }}

    [guards]
    max_zeroed_share = 0.2
    max_units_drop_share = 0.5
    approval_timeout_seconds = 3
    read_back_pages = 2
"""


@dataclass
class TwoMachines:
    api_url: str
    sandbox: SandboxServer
    state: StateLocation
    deployment: UUID
    a: Machine
    b: Machine
    feed_time: float = 0.0

    def feed(self, quantities: dict[str, int]) -> None:
        """The same warehouse export on both machines (as if both read one SFTP drop)."""
        self.feed_time = max(time.time(), self.feed_time + 10)
        text = "sku,qty\n" + "".join(f"{s},{q}\n" for s, q in quantities.items())
        for machine in (self.a, self.b):
            path = machine.folder / "feeds" / "east.csv"
            path.write_text(text)
            os.utime(path, (self.feed_time, self.feed_time))

    def run(self, machine: Machine, **parameters: object):
        return wait_for(self.api_url, machine.trigger(self.deployment, **parameters))

    def puts(self, since: int = 0) -> list:
        return [r for r in self.sandbox.requests()[since:] if r.method == "PUT"]

    def sent(self, since: int = 0) -> list[str]:
        return [i for r in self.puts(since) if r.status == 200 for i in r.product_ids]


@pytest.fixture(scope="module")
def machines(prefect_api, postgres, tmp_path_factory) -> Iterator[TwoMachines]:
    root = tmp_path_factory.mktemp("two-machines")
    url = postgres.create_database("two_machines")
    sandbox = SandboxServer(
        products=[product(s) for s in SKUS], token=TOKEN, max_products_per_call=1000
    ).start()
    create_pool(prefect_api, POOL, ["machine-a", "machine-b"])
    deployment = deploy(
        prefect_api, "acme-every-15-minutes", POOL, {"config_path": "acme.toml"}, ["acme"]
    )
    env = {"LIGHTSPEED_TOKEN": TOKEN, "STATE_DB_PASSWORD": "unused-with-trust-auth"}
    a = Machine("machine-a", root / "a", POOL, prefect_api, env)
    b = Machine("machine-b", root / "b", POOL, prefect_api, env)
    for machine in (a, b):
        (machine.folder / "feeds").mkdir(parents=True)
        config = CONFIG.format(
            base_url=sandbox.url, state_url=url, timeout_seconds=HOLD_SECONDS + 30
        )
        (machine.folder / "acme.toml").write_text(textwrap.dedent(config))
    try:
        a.start()
        b.start()
        yield TwoMachines(prefect_api, sandbox, StateLocation(url, "acme"), deployment, a, b)
    finally:
        a.stop()
        b.stop()
        sandbox.stop()


def state_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".sqlite3", ".parquet", ".lock")]


def test_runs_alternate_between_machines_and_each_sends_only_what_changed(machines):
    quantities = {s: 10 + i for i, s in enumerate(SKUS)}
    machines.feed(quantities)
    first = machines.run(machines.a)
    assert first.state.is_completed(), first.state.message
    assert sorted(machines.sent()) == sorted(pid(s) for s in SKUS)
    assert machines.sandbox.quantities() == {pid(s): q for s, q in quantities.items()}

    mark = len(machines.sandbox.requests())
    changed = {"S03": 99, "S17": 0, "S31": 7}
    machines.feed(quantities | changed)
    second = machines.run(machines.b)  # another machine: nothing of the first run's is here
    assert second.state.is_completed(), second.state.message
    assert sorted(machines.sent(mark)) == sorted(pid(s) for s in changed)
    catalog_pages = [r for r in machines.sandbox.requests()[mark:] if r.method == "GET"]
    assert len(catalog_pages) == 2  # the read-back's pages only: the catalog kept by A was used
    assert machines.sandbox.quantities()[pid("S03")] == 99

    mark = len(machines.sandbox.requests())
    machines.feed({s: (q if i < 5 else 0) for i, (s, q) in enumerate(quantities.items())})
    third = machines.run(machines.a)  # zeroes 35 of 40 in-stock products, as pushed by B
    assert third.state.is_failed()  # paused for approval, and nobody approved in time
    with prefect_client(machines.api_url) as client:
        history = [s.name for s in client.read_flow_run_states(third.id)]
    assert "Paused" in history, history
    assert machines.puts(mark) == []

    for machine in (machines.a, machines.b):
        assert state_files(machine.folder) == []  # no state on either machine's disk
    store = StateStore(machines.state)
    assert dict(store.last_pushed().iter_rows()) == machines.sandbox.quantities()
    assert store.feed_marks()["east"].run == second.name


def test_two_runs_started_at_once_never_both_load(machines):
    machines.feed({s: 50 + i for i, s in enumerate(SKUS)})
    machines.sandbox.reset()
    # Every PUT is held until one run has ended, so the two overlap however late a machine's
    # worker picks its run up. A 2 s delay per PUT did not: on a loaded CI box one run started
    # after the other had finished, and both loaded, one after the other.
    machines.sandbox.add_fault(Fault(delay=HOLD_SECONDS, times=1000))
    runs = [m.trigger(machines.deployment, full=True) for m in (machines.a, machines.b)]
    try:
        first = first_to_end(machines.api_url, runs, timeout=HOLD_SECONDS - 30)
    finally:
        machines.sandbox.end_delays()
    finished = [wait_for(machines.api_url, run) for run in runs]
    states = sorted(r.state.type.value for r in finished)
    assert states == ["COMPLETED", "FAILED"], [r.state.message for r in finished]
    [refused] = [r for r in finished if r.state.is_failed()]
    [loaded] = [r for r in finished if r.state.is_completed()]
    assert refused.id == first.id  # it ended while the loader was held inside its load
    assert f"is in use by run {loaded.name} (pid" in refused.state.message
    assert "nothing was done" in refused.state.message
    assert sorted(machines.sent()) == sorted(pid(s) for s in SKUS)  # one full pass, not two


def test_a_run_killed_on_one_machine_does_not_block_the_other(machines):
    wanted = {pid(s): 1000 + i for i, s in enumerate(SKUS)}
    machines.feed({s: 1000 + i for i, s in enumerate(SKUS)})
    machines.sandbox.reset()
    machines.sandbox.add_fault(Fault(delay=1.0, times=1000))  # a slow API: the kill lands mid-load
    doomed = machines.a.trigger(machines.deployment, full=True)
    deadline = time.monotonic() + 240
    while len(machines.sent()) < 12:
        assert time.monotonic() < deadline, "the load never started"
        time.sleep(0.1)
    machines.a.crash()
    time.sleep(1.5)  # PUTs already received still land
    landed = set(machines.sent())
    store = StateStore(machines.state)
    recorded = {i for i, q in store.last_pushed().iter_rows() if wanted[i] == q}
    assert 0 < len(landed) < N and recorded <= landed

    machines.sandbox.reset()
    after = machines.run(machines.b)  # at once: the killed run's lock died with its session
    assert after.state.is_completed(), after.state.message
    assert machines.sandbox.quantities() == wanted
    assert set(machines.sent()) == {pid(s) for s in SKUS} - recorded  # only what was not recorded
    with prefect_client(machines.api_url) as client:
        assert client.read_flow_run(doomed).state.type.value != "COMPLETED"  # Prefect's zombie
