"""The local stack behind `make run`: Prefect server and UI, sandbox API, deployments, a worker."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
import zoneinfo
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from uuid import UUID

from devstack.processes import ManagedProcess, NotReady, descendants, http_ok, port_in_use
from flows.server.retention import server_retention_env
from flows.server.setup import FLOW_NAME, PROJECT_ROOT

DEMO_CONFIG = PROJECT_ROOT / "demo" / "inventory-sync.toml"
WORK_POOL = "inventory-sync"
EVERY_15_MINUTES = "every-15-minutes"
NIGHTLY_FULL = "nightly-full"
ON_FEED_ARRIVAL = "on-feed-arrival"
DEPLOYMENTS = (EVERY_15_MINUTES, NIGHTLY_FULL, ON_FEED_ARRIVAL)
HOST = "127.0.0.1"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
UNFINISHED = ("PENDING", "RUNNING", "CANCELLING")

Say = Callable[[str], None]


class StackError(Exception):
    """The local stack cannot start or keep running; the message says why and what to do."""


def _executable(name: str) -> str:
    """A console script of this virtualenv, e.g. `prefect`."""
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else name


# the Prefect side


def prefect_client(api_url: str) -> Any:
    """A synchronous Prefect client bound to one server, whatever the active profile says."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api_url)


def deployment_url(ui_url: str, deployment_id: UUID) -> str:
    return f"{ui_url}/deployments/deployment/{deployment_id}"


def flow_run_url(ui_url: str, flow_run_id: UUID) -> str:
    return f"{ui_url}/runs/flow-run/{flow_run_id}"


def wait_for_final_state(
    api_url: str,
    flow_run_id: UUID,
    timeout: float,
    on_change: Callable[[str], None] | None = None,
) -> Any:
    """Poll a flow run until its state is final; return the flow run."""
    deadline = time.monotonic() + timeout
    seen = ""
    with prefect_client(api_url) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            name = run.state.name if run.state else "no state"
            if name != seen and on_change is not None:
                on_change(name)
            seen = name
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise StackError(f"flow run {run.name} is still {name} after {timeout:.0f} s")
            time.sleep(0.5)


def summary_text(api_url: str, flow_run_id: UUID) -> str | None:
    """The run's `sync-summary` artifact as plain text, if the run wrote one."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with prefect_client(api_url) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["sync-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    if not found or not isinstance(found[0].data, str):
        return None
    return found[0].data.strip().removeprefix("```").removesuffix("```").strip()


class LocalStack:
    """A Prefect server on loopback, the sandbox API, the deployments and a `process` worker."""

    def __init__(
        self,
        home: Path,
        folder: Path,
        port: int = 4200,
        sandbox_port: int = 8765,
        timezone: str = "UTC",
        worker_poll_seconds: float = 5,
        say: Say = print,
        server_env: dict[str, str] | None = None,
        setup: dict[str, Any] | None = None,
        access_token_seconds: float | None = None,
    ) -> None:
        from devstack.demo import ACCESS_TOKEN_SECONDS

        self.home = home.resolve()
        self.folder = folder.resolve()
        self.port = port
        self.sandbox_port = sandbox_port
        self.timezone = timezone
        self.worker_poll_seconds = worker_poll_seconds
        self.say = say
        self.ui_url = f"http://{HOST}:{port}"
        self.api_url = f"{self.ui_url}/api"
        self.config = self.folder / "inventory-sync.toml"
        self.deployments: dict[str, UUID] = {}
        self.catalog: list[dict[str, Any]] = []
        self.sandbox: Any = None  # sandbox.server.SandboxServer once started
        self.access_token_seconds = access_token_seconds or ACCESS_TOKEN_SECONDS
        # what a sync of the demo config needs (the sandbox's URLs, its OAuth client secret, the
        # token encryption key): the environment of the worker and the watcher, never argv
        self.sync_env: dict[str, str] = {}
        self.server = ManagedProcess(
            "Prefect server",
            [_executable("prefect"), "server", "start", "--host", HOST, "--port", str(port)],
            self._env(
                PREFECT_UI_API_URL=self.api_url,
                **server_retention_env(os.environ),  # old runs deleted: docs/operations.md
                **(server_env or {}),
            ),
            self.home / "server.log",
            cwd=PROJECT_ROOT,
        )
        self.setup = dict(setup or {})  # SetupOptions fields beyond the config and timezone
        self.setup_report: Any = None  # flows.server.setup.SetupReport once set up
        self.worker: ManagedProcess | None = None
        self.watcher: ManagedProcess | None = None
        self.server_seconds = 0.0

    def _env(self, **extra: str) -> dict[str, str]:
        """The environment of every child: this project's Prefect home and server, no telemetry."""
        env = {
            k: v for k, v in os.environ.items() if k not in ("PREFECT_API_KEY", "PREFECT_PROFILE")
        }
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            GX_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def check(self) -> None:
        """Refuse a taken UI port or an unknown timezone before starting anything."""
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise StackError(
                f"unknown timezone {self.timezone!r}: use an IANA name such as Europe/Amsterdam"
            ) from None
        if port_in_use(self.port):
            raise StackError(
                f"port {self.port} on {HOST} is already in use, so the Prefect server and its UI "
                "cannot start there. Another `make run` or Prefect server may be running: stop "
                f"it (`ss -ltnp 'sport = :{self.port}'` shows which process holds the port), or "
                "pick another port: `make run PORT=4300`."
            )
        if self.sandbox_port and port_in_use(self.sandbox_port):
            self.say(f"Port {self.sandbox_port} is taken: the sandbox API takes any free port.")
            self.sandbox_port = 0  # the worker is told the sandbox's URL, whatever its port

    def start(self) -> LocalStack:
        """Start everything in order; each step waits until the previous one answers."""
        from devstack.demo import DEMO_TOKEN, sandbox_env, write_demo
        from sandbox.server import SandboxServer

        self.check()
        self.home.mkdir(parents=True, exist_ok=True)
        self.catalog = write_demo(self.folder)
        if not self.config.exists():
            shutil.copyfile(DEMO_CONFIG, self.config)
        self.sandbox = SandboxServer(
            products=self.catalog,
            token=DEMO_TOKEN,
            port=self.sandbox_port,
            access_token_seconds=self.access_token_seconds,
        ).start()
        self.sandbox_port = self.sandbox.port
        self.sync_env = sandbox_env(self.sandbox, self.folder)
        self.say(
            f"Sandbox Lightspeed API on {self.sandbox.url} ({len(self.catalog)} products; "
            f"OAuth access tokens last {self.access_token_seconds:.0f} s)"
        )
        self.authorize()

        began = time.monotonic()
        self.server.start()
        self._wait_for_server(timeout=180)
        self.server_seconds = time.monotonic() - began
        self.say(f"Prefect server on {self.ui_url} (answered after {self.server_seconds:.1f} s)")

        self._set_up_server()
        self.start_worker()
        self.start_watcher()
        return self

    def authorize(self) -> None:
        """Store a first refresh token, as `inventory-sync auth` does (again after a reset)."""
        from devstack.demo import sign_in

        status, said = sign_in(self.config, self.sandbox, self.sync_env)
        if status:
            raise StackError(
                "storing the sandbox's first refresh token failed: " + " ".join(said).strip()
            )
        for line in said:
            self.say(line)

    def start_worker(self, name: str = "local-worker") -> ManagedProcess:
        """A `process` worker on the pool (replacing any earlier one), once it has said hello."""
        from devstack.demo import DEMO_TOKEN

        if self.worker is not None:
            self.worker.stop()
        since = datetime.now(UTC) - timedelta(seconds=1)
        self.worker = ManagedProcess(
            "Prefect worker",
            [
                _executable("prefect"),
                "worker",
                "start",
                "--pool",
                WORK_POOL,
                "--type",
                "process",
                "--name",
                name,
            ],
            self._env(
                LIGHTSPEED_TOKEN=DEMO_TOKEN,  # the sandbox's token, never a real one
                **self.sync_env,
                PREFECT_WORKER_QUERY_SECONDS=str(self.worker_poll_seconds),
            ),
            self.home / ("worker.log" if name == "local-worker" else f"worker-{name}.log"),
            cwd=PROJECT_ROOT,
        ).start()
        self._wait_for_worker(name, since, timeout=120)
        self.say(f"Worker polling work pool {WORK_POOL!r} (log: {self.worker.log})")
        return self.worker

    def start_watcher(self) -> ManagedProcess:
        """`inventory-sync watch` on the demo config, once its file-system watches are armed."""
        if self.watcher is not None:
            self.watcher.stop()  # an earlier one, alive or not: its log is closed either way
        self.watcher = ManagedProcess(
            "watcher",
            [_executable("inventory-sync"), "watch", "--config", str(self.config)],
            self._env(**self.sync_env),
            self.home / "watcher.log",
            cwd=PROJECT_ROOT,
        ).start()
        watcher = self.watcher
        try:
            watcher.wait_until_ready(
                lambda: "a change is an arrival after" in watcher.log_tail(50), timeout=120
            )
        except NotReady as exc:
            raise StackError(str(exc)) from None
        self.say(f"Watcher on {self.folder / 'feeds'} (log: {self.watcher.log})")
        return self.watcher

    def restart_server(self, down_seconds: float = 0.0) -> None:
        """Stop the Prefect server and start it again on the same port and database."""
        self.server.stop()
        time.sleep(down_seconds)
        self.server.start()
        self._wait_for_server(timeout=180)

    def _wait_for_server(self, timeout: float) -> None:
        try:
            self.server.wait_until_ready(lambda: http_ok(f"{self.api_url}/health"), timeout)
        except NotReady as exc:
            raise StackError(str(exc)) from None

    def _set_up_server(self) -> None:
        """What `inventory-sync deploy` does (flows/server/setup.py), against this stack's server."""
        from prefect.settings import (
            PREFECT_API_AUTH_STRING,
            PREFECT_API_KEY,
            PREFECT_API_URL,
            temporary_settings,
        )

        from flows.server.setup import SetupError, SetupOptions, set_up_server

        options = SetupOptions(config_path=self.config, timezone=self.timezone, **self.setup)
        try:
            # the user's own credentials are for their own server, never for this one
            with temporary_settings(
                updates={PREFECT_API_URL: self.api_url},
                restore_defaults={PREFECT_API_KEY, PREFECT_API_AUTH_STRING},
            ):
                report = set_up_server(
                    self.api_url, options, say=lambda _: None, environ=self._env()
                )
        except SetupError as exc:
            raise StackError(str(exc)) from None
        self.setup_report = report
        self.deployments = dict(report.deployments)
        with prefect_client(self.api_url) as client:
            self._crash_orphans(client)
        self.say(
            f"Deployments {', '.join(self.deployments)} registered from "
            f"{options.prefect_file.name} (timezone {self.timezone}); "
            f"work pool {WORK_POOL!r}; {len(report.automations)} automations "
            "(inventory-sync deploy does the same on any server)"
        )

    def _crash_orphans(self, client: Any) -> None:
        """Runs a previous local stack left running can never finish: mark them Crashed."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
            WorkPoolFilter,
            WorkPoolFilterName,
        )
        from prefect.states import Crashed

        orphans = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(UNFINISHED)))
            ),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[WORK_POOL])),
        )
        for run in orphans:
            client.set_flow_run_state(
                run.id,
                Crashed(message="the local stack stopped while this run was in flight"),
                force=True,
            )
            self.say(
                f"Marked flow run {run.name}, left {run.state.name} by an earlier stack, as Crashed"
            )

    def _wait_for_worker(self, name: str, since: datetime, timeout: float) -> None:
        """Until this worker has said hello to the server (the pool turns Ready)."""
        assert self.worker is not None
        deadline = time.monotonic() + timeout
        with prefect_client(self.api_url) as client:
            while time.monotonic() < deadline:
                if self.worker.exit_code() is not None:
                    raise StackError(
                        f"the Prefect worker exited with status {self.worker.exit_code()}; the "
                        f"end of {self.worker.log}:\n{self.worker.log_tail()}"
                    )
                workers = client.read_workers_for_work_pool(WORK_POOL)
                if any(w.name == name and w.last_heartbeat_time >= since for w in workers):
                    return
                time.sleep(0.25)
        raise StackError(f"the Prefect worker did not reach the server within {timeout:.0f} s")

    def trigger(self, deployment: str = EVERY_15_MINUTES, **parameters: Any) -> UUID:
        """Start a run of a deployment the way the UI's Run button does; return its id."""
        with prefect_client(self.api_url) as client:
            run = client.create_flow_run_from_deployment(
                self.deployments[deployment], parameters=parameters or None
            )
        return UUID(str(run.id))

    def dead_process(self) -> ManagedProcess | None:
        """The server, worker or watcher if it has exited on its own."""
        for process in (self.server, self.worker, self.watcher):
            if process is not None and process.exit_code() is not None:
                return process
        return None

    def stop(self) -> None:
        """Stop the watcher, the worker (and its flow runs), the server, then the sandbox."""
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (
                signal.SIGINT,
                signal.SIGTERM,
            ):  # a second Ctrl-C must not cut this short
                previous[signum] = signal.signal(signum, signal.SIG_IGN)
        try:
            if self.watcher is not None:
                self.watcher.stop()
            if self.worker is not None:
                self.worker.stop()
            self.server.stop()
            if self.sandbox is not None:
                self.sandbox.stop()
                self.sandbox = None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# the `inventory-sync-dev local-stack` command


def _stop_on(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_local_stack(home: Path, folder: Path, port: int, sandbox_port: int, timezone: str) -> int:
    """Start the stack, run one sync, say where to look, then watch runs until Ctrl-C."""
    stack = LocalStack(home, folder, port, sandbox_port, timezone)
    if threading.current_thread() is threading.main_thread():
        # SIGINT too: a shell starts background commands with it ignored
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _stop_on)
    try:
        stack.check()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with stack:
            _first_run(stack)
            _watch(stack)
    except KeyboardInterrupt:
        left = descendants(os.getpid())
        ports = [p for p in (stack.port, stack.sandbox_port) if p and port_in_use(p)]
        if left or ports:
            print(f"error: still running: pids {sorted(p.pid for p in left)}, ports {ports}")
            return 1
        print(
            "Stopped: the watcher, the worker, the Prefect server and the sandbox; no process or "
            "port is left."
        )
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 1


def _first_run(stack: LocalStack) -> None:
    """Trigger one run now, follow it to the end, and print what it did."""
    from devstack.demo import expected_quantities

    run_id = stack.trigger()
    print(
        f"Triggered a run of {FLOW_NAME}/{EVERY_15_MINUTES}: {flow_run_url(stack.ui_url, run_id)}"
    )
    began = time.monotonic()
    run = wait_for_final_state(
        stack.api_url, run_id, timeout=600, on_change=lambda state: print(f"  … {state}")
    )
    print(f"Run {run.name} ended {run.state.name} after {time.monotonic() - began:.1f} s.")
    summary = summary_text(stack.api_url, run_id)
    if summary:
        print(summary)
    wrong = {
        pid: want
        for pid, want in expected_quantities(stack.catalog).items()
        if stack.sandbox.quantities().get(pid) != want
    }
    print(
        f"Demo check: {len(wrong)} product(s) differ from the expected quantity in the sandbox."
        if wrong
        else "Demo check: the sandbox holds the expected quantity for every demo product."
    )
    schedule_lines = [
        f"  {name:<18} {deployment_url(stack.ui_url, deployment_id)}"
        for name, deployment_id in stack.deployments.items()
    ]
    print(
        "\n".join(
            [
                "",
                f"Prefect UI: {stack.ui_url}",
                "  Deployments (schedules, Run → Quick run / Custom run):",
                *schedule_lines,
                f"  This run: {flow_run_url(stack.ui_url, run_id)}",
                "    Artifacts tab: sync-summary, quarantine, load-progress; "
                "Task Runs tab: one `chunk N/M …` per chunk of PUTs, with its attempts and each request's outcome.",
                f"  Automations (they watch the runs; alerts are recorded only until "
                f"`inventory-sync deploy --notify BLOCK`): {stack.ui_url}/automations",
                f"Sandbox API: {stack.sandbox.url}/_sandbox/quantities",
                f"Logs: {stack.server.log}, {stack.home / 'worker.log'}, "
                f"{stack.home / 'watcher.log'}",
                f"Drop a feed into {stack.folder / 'feeds'} (e.g. a new east-*.csv): the watcher "
                f"starts a run of {ON_FEED_ARRIVAL} for it within seconds.",
                f"Schedules are active: every 15 minutes and nightly, timezone {stack.timezone}.",
                "Press Ctrl-C to stop everything.",
            ]
        ),
        flush=True,
    )


def _watch(stack: LocalStack) -> None:
    """Print each run that ends; stop when the server or the worker dies."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterEndTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    since = datetime.now(UTC)
    reported: set[UUID] = set()
    names = {deployment_id: name for name, deployment_id in stack.deployments.items()}
    with prefect_client(stack.api_url) as client:
        while True:
            for _ in _ticks(5):
                dead = stack.dead_process()
                if dead is not None:
                    raise StackError(
                        f"the {dead.name} exited with status {dead.exit_code()}; the end of "
                        f"{dead.log}:\n{dead.log_tail()}"
                    )
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=list(names)),
                    end_time=FlowRunFilterEndTime(after_=since),
                ),
                sort=FlowRunSort.END_TIME_DESC,
                limit=20,
            )
            for run in reversed(runs):
                if run.id in reported or run.state is None or run.state.type.value not in FINAL:
                    continue
                reported.add(run.id)
                print(
                    f"{datetime.now().strftime('%H:%M:%S')} run {run.name} "
                    f"({names.get(run.deployment_id, '?')}): {run.state.name} "
                    f"{flow_run_url(stack.ui_url, run.id)}",
                    flush=True,
                )


def _ticks(seconds: int) -> Iterator[None]:
    for _ in range(seconds):
        time.sleep(1)
        yield None
