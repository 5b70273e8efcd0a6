"""Child processes for the benchmarks: a measured run, a Prefect server, the sandbox API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from devstack.processes import ManagedProcess, free_port, http_ok

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


@dataclass(frozen=True)
class Measured:
    """What a child process took: wall time, peak resident memory, and what it printed."""

    seconds: float
    peak_rss_bytes: int
    returncode: int
    output: str

    @property
    def peak_rss_gb(self) -> float:
        return self.peak_rss_bytes / 1024**3


def run_measured(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 900
) -> Measured:
    """Run a command to its end; its own peak RSS comes from wait4, not from its siblings."""
    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **QUIET_ENV, **(env or {})},
            cwd=ROOT,
        )
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode("utf-8", "replace")
    return Measured(seconds, usage.ru_maxrss * 1024, process.returncode, text)


def python_module(module: str, *args: str) -> list[str]:
    """argv for `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def last_json(output: str) -> dict[str, Any]:
    """The last line of a child's output that is a JSON object: its figures."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError(f"the child printed no JSON result:\n{output[-3000:]}")


@contextmanager
def _process(
    name: str, argv: Sequence[str], env: Mapping[str, str], log: Path
) -> Iterator[ManagedProcess]:
    """A background process in its own session, stopped with all it started on exit."""
    process = ManagedProcess(name, argv, {**os.environ, **QUIET_ENV, **env}, log, cwd=ROOT)
    try:
        yield process.start()
    finally:
        process.stop()


@dataclass(frozen=True)
class PrefectServer:
    """A running `prefect server start`: its API URL and process id."""

    api: str
    pid: int | None


@contextmanager
def prefect_server(
    home: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[PrefectServer]:
    """`prefect server start` on a free port, SQLite under `home` (unless extra_env names a database)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(home), "PREFECT_UI_API_URL": api, "PREFECT_API_URL": ""}
    env |= dict(extra_env or {})
    argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _process("Prefect server", argv, env, home / "server.log") as process:
        process.wait_until_ready(lambda: http_ok(f"{api}/health"), timeout=120)
        yield PrefectServer(api, process.pid)


@dataclass(frozen=True)
class Sandbox:
    """A sandbox API in a child process, and its control endpoints."""

    url: str
    token: str
    pid: int

    def requests(self) -> list[dict[str, Any]]:
        """The sandbox's request log since its last reset."""
        rows: list[dict[str, Any]] = httpx.get(f"{self.url}/_sandbox/requests", timeout=300).json()[
            "requests"
        ]
        return rows

    def reset_log(self) -> None:
        """Clear the request log and any faults (the catalog and its quantities stay)."""
        httpx.post(f"{self.url}/_sandbox/reset", timeout=60).raise_for_status()

    def add_faults(self, faults: list[dict[str, Any]]) -> None:
        httpx.post(f"{self.url}/_sandbox/faults", json=faults, timeout=60).raise_for_status()


@contextmanager
def sandbox_server(catalog: Path, max_products: int, folder: Path) -> Iterator[Sandbox]:
    """`inventory-sync-dev sandbox` on a free port, serving `catalog`, in a child process."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token = "bench-token"
    argv = [
        str(BIN / "inventory-sync-dev"),
        "sandbox",
        "--port",
        str(port),
        "--catalog",
        str(catalog),
        "--max-products",
        str(max_products),
    ]
    url = f"http://127.0.0.1:{port}"
    log = folder / f"sandbox-{port}.log"
    with _process("sandbox API", argv, {"LIGHTSPEED_TOKEN": token}, log) as process:
        process.wait_until_ready(lambda: http_ok(f"{url}/_sandbox/faults"), timeout=300)
        assert process.pid is not None  # it has started
        yield Sandbox(url, token, process.pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (not of its children)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def settle(pid: int | None, limit: float = 60.0) -> float:
    """Wait until the Prefect server has digested the last run's task runs; seconds waited.

    It does so after a run returns, on the same cores: without this wait, its work for one
    load trial slowed the next, and a full sync's slowed the 2 % cycle measured after it
    (which in production comes 15 minutes later).
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
