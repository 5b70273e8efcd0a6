"""Every expected failure, as a user meets it from the CLI: one clear message, no traceback, nothing sent.

Each case runs the real command in a subprocess against the sandbox and a real Prefect server,
then reads the run's logs back from the server, as the UI shows them.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from builders import csv_warehouse, pid, product
from cli_runs import CLI, cli, cli_env, flow_run_of, run_events, run_logs

from sandbox.server import Fault, SandboxServer
from tasks.state.lock import run_lock

pytestmark = pytest.mark.slow
FEED = "sku,qty\n" + "".join(f"S{i},{i + 1}\n" for i in range(4))


@dataclass(frozen=True)
class Case:
    """A bad input, the exit status it must give, and the message that must say why."""

    name: str
    arrange: Callable[[Path, SandboxServer, Callable[..., Path]], Path]  # → the config
    status: int
    message: str
    args: tuple[str, ...] = ()
    sends_puts: bool = False  # the API is asked, and refuses: nothing lands either way
    logged: str = ""  # what the run's logs say, when not the message itself


def east(write_config, **extra) -> Path:
    return write_config(
        csv_warehouse("east", extra.pop("path", "feeds/east.csv"), **extra),
        lightspeed="chunk_size = 2\nretries = 1",
    )


def feed_bytes(data: bytes) -> Callable[[Path, SandboxServer, Callable[..., Path]], Path]:
    def arrange(tmp_path, sandbox, write_config):
        (tmp_path / "feeds" / "east.csv").write_bytes(data)
        return east(write_config)

    return arrange


def config_of(**extra) -> Callable[[Path, SandboxServer, Callable[..., Path]], Path]:
    return lambda tmp_path, sandbox, write_config: east(write_config, **extra)


def stale(tmp_path, sandbox, write_config):
    old = time.time() - 3 * 3600
    os.utime(tmp_path / "feeds" / "east.csv", (old, old))
    return east(write_config, max_age="2h")


def api_refuses(tmp_path, sandbox, write_config):
    sandbox.add_fault(Fault(method="GET", path="/products", status=403, times=100))
    return east(write_config)


def chunks_fail(tmp_path, sandbox, write_config):
    sandbox.add_fault(Fault(status=503, times=100))
    return east(write_config)


def guard_trips(tmp_path, sandbox, write_config):
    """Every product in stock on the platform, and a feed that zeroes them all."""
    sandbox.reset(products=[product(f"S{i}", quantity=10) for i in range(4)])
    (tmp_path / "feeds" / "east.csv").write_text(
        "sku,qty\n" + "".join(f"S{i},0\n" for i in range(4))
    )
    return write_config(
        csv_warehouse("east", "feeds/east.csv"),
        guards="max_zeroed_share = 0.2",
    )


CASES = [
    Case(
        "a gzip file read as CSV",
        feed_bytes(gzip.compress(FEED.encode())),
        1,
        "feeds/east.csv: gzip-compressed, not CSV text (decompress it first)",
    ),
    Case(
        "a wrong delimiter",
        feed_bytes(FEED.replace(",", ";").encode()),
        1,
        "missing column(s) 'sku', 'qty'; the file has 'sku;qty'",
    ),
    Case(
        "a glob matching nothing",
        config_of(path="feeds/east-*.csv"),
        1,
        "warehouse 'east': no file matches",
    ),
    Case("an empty file", feed_bytes(b""), 1, "feeds/east.csv: file is empty (no header row)"),
    Case("a path that is a folder", config_of(path="feeds"), 1, "feeds is a folder; path must"),
    Case(
        "a header naming the quantity twice",
        feed_bytes(b"sku,qty,qty\nS0,1,2\n"),
        1,
        "quantity_column 'qty' is ambiguous: the header has 'qty' 2 times (columns 2 and 3)",
    ),
    Case("a stale feed", stale, 1, "warehouse 'east': stale: feed"),
    Case(
        "a fatal API answer",
        api_refuses,
        1,
        "GET /products: HTTP 403 injected fault: 403 (the token lacks permission)",
    ),
    Case(
        "chunks that did not land",
        chunks_fail,
        1,
        "Result: FAILED: 4 product(s) did not land",
        sends_puts=True,
        logged="2 chunk(s) failed; 4 product(s) did not land",
    ),
    Case(
        "a rejected approval",
        guard_trips,
        1,
        "the change guard tripped and the run was rejected (feed is truncated); nothing was sent",
    ),
    Case(
        "bad configuration the run finds",
        config_of(),
        2,
        "warehouses parameter: no warehouse named 'nowhere'",
        args=("--warehouse", "nowhere"),
    ),
]


def reject_when_paused(config: Path) -> threading.Thread:
    """Answer this config's approval form with a rejection, as someone in the UI would."""
    from prefect.client.orchestration import get_client

    def reject() -> None:
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                for run in client.read_flow_runs(limit=50):
                    if (
                        run.parameters.get("config_path") == str(config)
                        and run.state is not None
                        and run.state.is_paused()
                    ):
                        client.resume_flow_run(
                            run.id, run_input={"approve": False, "note": "feed is truncated"}
                        )
                        return
                time.sleep(0.3)

    thread = threading.Thread(target=reject, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_an_expected_failure_is_one_clear_message_without_a_traceback(
    case, tmp_path, sandbox, write_config, prefect_api
):
    sandbox.reset(products=[product(f"S{i}") for i in range(4)])
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "east.csv").write_text(FEED)
    config = case.arrange(tmp_path, sandbox, write_config)
    approver = reject_when_paused(config) if case.arrange is guard_trips else None

    result = cli("run", "--config", str(config), *case.args, api=prefect_api, cwd=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == case.status, output
    assert "Traceback" not in output
    if case.sends_puts:  # the summary says what did not land
        assert case.message in result.stdout, output
    else:  # the last thing printed
        assert case.message in result.stderr[result.stderr.rindex("\nerror: ") :], output
    puts = [r for r in sandbox.requests() if r.method == "PUT"]
    assert [r for r in puts if r.status == 200] == []
    assert bool(puts) == case.sends_puts
    assert set(sandbox.quantities().values()) <= {0, 10}  # as the catalog was loaded
    if approver is not None:
        approver.join(5)

    run = flow_run_of(config)
    logs = run_logs(run.id)
    assert not [m for m in logs if "Traceback" in m], "\n".join(logs)
    assert any((case.logged or case.message) in m for m in logs), logs
    [event] = run_events(prefect_api, run.id)
    assert event["event"] == "inventory-sync.run.failed"  # the on-failure hook still fires


BUGGY_CLI = """
import sys

import tasks.reconcile


def a_bug(*args, **kwargs):
    raise ZeroDivisionError("a deliberate bug in the rules")


tasks.reconcile.plan_updates = a_bug  # every route through the rules ends here
from flows.cli.app import app

sys.exit(app())
"""


def test_a_bug_still_shows_its_traceback(tmp_path, sandbox, write_config, prefect_api):
    sandbox.reset(products=[product(f"S{i}") for i in range(4)])
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "east.csv").write_text(FEED)
    config = east(write_config)
    result = cli(
        "run", "--config", str(config), api=prefect_api, cwd=tmp_path,
        program=[sys.executable, "-c", BUGGY_CLI],
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "ZeroDivisionError: a deliberate bug in the rules" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == (
        "error: the run failed: ZeroDivisionError: a deliberate bug in the rules"
    )
    logs = run_logs(flow_run_of(config).id)
    assert any("Traceback" in m and "a deliberate bug" in m for m in logs)
    assert [r for r in sandbox.requests() if r.method == "PUT"] == []


def test_a_busy_state_exits_3_at_once_without_starting_prefect(tmp_path, sandbox, write_config):
    sandbox.reset(products=[product(f"S{i}") for i in range(4)])
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "east.csv").write_text(FEED)
    config = east(write_config)
    with run_lock(tmp_path / "state", "run scheduled-sync"):
        started = time.monotonic()
        result = cli("run", "--config", str(config), api=None, cwd=tmp_path)
        seconds = time.monotonic() - started
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr == (
        f"error: state {tmp_path / 'state'} is in use by run scheduled-sync (pid {os.getpid()}, "
        f"since {result.stderr.split('since ')[1].split(')')[0]}): another run of this config is "
        "in progress; nothing was done (two syncs of one state never overlap)\n"
    )
    assert result.stdout == ""  # no Prefect: no temporary server, no log line
    assert seconds < 3
    assert sandbox.requests() == []


def test_two_cli_runs_of_one_config_at_once(tmp_path, sandbox, write_config):
    """No Prefect server: the winner starts a temporary one; the loser starts nothing."""
    n = 8
    sandbox.reset(products=[product(f"S{i}") for i in range(n)])
    (tmp_path / "east.csv").write_text("sku,qty\n" + "".join(f"S{i},{i}\n" for i in range(n)))
    config = write_config(csv_warehouse("east", "east.csv"), lightspeed="chunk_size = 2")
    env = cli_env(PREFECT_HOME=str(tmp_path / "prefect-home"))  # the one both share
    command = [*CLI, "run", "--config", str(config)]
    started = time.monotonic()
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    processes = [subprocess.Popen(command, cwd=tmp_path, env=env, **pipes) for _ in range(2)]
    ended: dict[int, float] = {}
    while len(ended) < 2 and time.monotonic() - started < 180:
        for i, process in enumerate(processes):
            if i not in ended and process.poll() is not None:
                ended[i] = time.monotonic() - started
        time.sleep(0.02)
    outputs = [process.communicate(timeout=30) for process in processes]
    statuses = [process.returncode for process in processes]
    assert sorted(statuses) == [0, 3], outputs
    winner, loser = statuses.index(0), statuses.index(3)
    out, err = outputs[loser]
    assert ended[loser] < 3, f"the busy run took {ended[loser]:.1f}s"
    assert "another run of this config is in progress; nothing was done" in err
    assert "Starting temporary server" not in out + err
    assert "Traceback" not in out + err
    assert "Traceback" not in "".join(outputs[winner]), outputs[winner]
    assert "Result: OK" in outputs[winner][0]
    assert sandbox.quantities() == {pid(f"S{i}"): i for i in range(n)}
    assert len([r for r in sandbox.requests() if r.method == "PUT"]) == n // 2
