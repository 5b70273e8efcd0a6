"""`inventory-sync watch`: new warehouse feeds become `inventory-sync.feed.arrived` events.

Feeds on local disk are watched through file-system events (watchfiles); SFTP drops and WMS
APIs are probed every `poll_interval`. A change is an arrival once it has settled; arrivals
within `watch.debounce` of the first become one event, sent only while no run of the
triggered deployment is in flight. What was sent is kept beside the state, so a watcher
restarted after a kill still sends whatever arrived while it was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from flows.watcher.batching import Batch, RunGate, RunView, Settling
from flows.watcher.event import arrival_event
from flows.watcher.seen import load_seen, save_seen, seen_path
from tasks.config.secrets import resolve_secrets
from tasks.config.settings import Settings
from tasks.sources import registry
from tasks.sources.feed import Fingerprint, Secrets, WarehouseUnreadable
from tasks.sources.local_files import FileWarehouse
from tasks.sources.warehouse import RemoteWarehouse, WarehouseBase

TICK_SECONDS = 0.25  # how often settling files are looked at again and the batch is checked
RUN_GRACE_SECONDS = 60.0  # how long an event may take to become a run before we stop waiting
RETRY_SECONDS = 5.0  # after the server could not be reached
GLOB_CHARACTERS = "*?["
ACTIVE = ("PENDING", "RUNNING", "PAUSED", "CANCELLING")

log = logging.getLogger("inventory-sync.watch")


class WatchError(Exception):
    """The watcher cannot start or go on; the message says what to fix."""


@dataclass(frozen=True)
class WatchPlan:
    """Which warehouses are watched how, and which are left to the schedule."""

    local: list[FileWarehouse]
    polled: list[RemoteWarehouse]
    unwatched: list[WarehouseBase]

    @property
    def watched(self) -> list[WarehouseBase]:
        return [*self.local, *self.polled]


def plan_watch(settings: Settings) -> WatchPlan:
    """Files and globs by events, remote kinds with a probe by polling, the rest not at all."""
    local: list[FileWarehouse] = []
    polled: list[RemoteWarehouse] = []
    unwatched: list[WarehouseBase] = []
    for warehouse in settings.warehouses:
        probe = registry.kind_of(warehouse).probe
        if probe is not None and isinstance(warehouse, FileWarehouse):
            local.append(warehouse)
        elif probe is not None and isinstance(warehouse, RemoteWarehouse):
            polled.append(warehouse)
        else:
            unwatched.append(warehouse)
    return WatchPlan(local, polled, unwatched)


def watch_root(pattern: str) -> Path:
    """The deepest folder of a path or glob that holds no glob character: what to watch."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if any(c in part for c in GLOB_CHARACTERS):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def roots(warehouses: Sequence[FileWarehouse]) -> dict[Path, list[str]]:
    """The folders to watch, each with the warehouses whose feeds live below it."""
    found: dict[Path, list[str]] = {}
    for warehouse in warehouses:
        found.setdefault(watch_root(warehouse.path).resolve(), []).append(warehouse.name)
    return found


def touched(changed: Sequence[str], watched: Mapping[Path, list[str]]) -> set[str]:
    """The warehouses below whose folder something changed (each is then probed again)."""
    names: set[str] = set()
    for path in map(Path, changed):
        for root, warehouses in watched.items():
            if path == root or root in path.parents:
                names.update(warehouses)
    return names


def probe(warehouse: WarehouseBase, secrets: Secrets) -> Fingerprint | None:
    """The feed's fingerprint now, or None when there is none (no file yet, server down)."""
    check = registry.kind_of(warehouse).probe
    assert check is not None
    try:
        return check(warehouse, secrets)
    except WarehouseUnreadable as exc:
        log.info("%s: no feed to look at: %s", warehouse.name, exc.cause)
    except Exception as exc:  # a watcher outlives any one bad look; the next probe tries again
        log.warning("%s: probe failed: %s: %s", warehouse.name, type(exc).__name__, exc)
    return None


def _seconds(value: timedelta) -> float:
    return value.total_seconds()


class Watcher:
    """The long-running loop; `run` returns when its `stop` event is set."""

    def __init__(self, settings: Settings, config_path: Path) -> None:
        self.settings = settings
        self.config_path = config_path.resolve()
        self.plan = plan_watch(settings)
        self.batch = Batch(_seconds(settings.watch.debounce))
        self.gate = RunGate(RUN_GRACE_SECONDS)
        self.secrets: Mapping[str, Secrets] = resolve_secrets(self.plan.polled)
        self.seen_file = seen_path(settings.state.dir)
        self.seen: dict[str, Fingerprint] = {}
        self.settling = Settling(_seconds(settings.watch.settle), {})
        self.dirty: set[str] = set()  # local warehouses with a file-system event to look at
        self.armed = asyncio.Event()  # the file-system watches are in place

    def _by_name(self, name: str) -> WarehouseBase:
        return next(w for w in self.plan.watched if w.name == name)

    async def _probe(self, name: str) -> Fingerprint | None:
        warehouse = self._by_name(name)
        return await asyncio.to_thread(probe, warehouse, self.secrets.get(name, {}))

    async def start(self) -> None:
        """Compare every watched feed with the fingerprints last sent (a baseline the first time)."""
        if not self.plan.watched:
            raise WatchError(
                "no warehouse can be watched: files, globs, sftp and http warehouses can; "
                "sql ones are read by the schedule"
            )
        now = asyncio.get_running_loop().time()
        current = {w.name: await self._probe(w.name) for w in self.plan.watched}
        previous = load_seen(self.seen_file)
        if previous is None:
            self.seen = {name: fp for name, fp in current.items() if fp is not None}
            save_seen(self.seen_file, self.seen)
            log.info(
                "first start on this state: %d feed(s) taken as they are; changes from now on "
                "are arrivals (%s)",
                len(self.seen),
                self.seen_file,
            )
        else:
            self.seen = previous
        self.settling = Settling(_seconds(self.settings.watch.settle), self.seen)
        for name, fingerprint in current.items():
            self.settling.observe(name, fingerprint, now)
        for name in self.settling.unsettled():
            log.info("%s: %s changed since the watcher last ran", name, current[name])
        self._describe()

    def _describe(self) -> None:
        for warehouse in self.plan.local:
            log.info("watching %s: %s (file-system events)", warehouse.name, warehouse.path)
        for remote in self.plan.polled:
            log.info(
                "polling %s (%s) every %g s",
                remote.name,
                remote.kind,
                _seconds(remote.poll_interval),
            )
        for other in self.plan.unwatched:
            log.info("not watched: %s (%s: the schedule reads it)", other.name, other.kind)

    def _ready(self) -> None:
        """Say the watcher is armed: from here on no change goes unseen."""
        watch = self.settings.watch
        log.info(
            "a change is an arrival after %.1f s unchanged; arrivals within %.1f s make one run "
            "of %s",
            _seconds(watch.settle),
            _seconds(watch.debounce),
            watch.deployment,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Watch, settle, batch and send until `stop` is set."""
        from prefect.client.orchestration import get_client
        from prefect.events.clients import get_events_client

        await self.start()
        async with get_client() as client, get_events_client() as events:
            deployment_id = await self._deployment(client)
            jobs = [asyncio.create_task(self._file_events(stop))]
            jobs += [asyncio.create_task(self._poll(w, stop)) for w in self.plan.polled]
            try:
                await asyncio.wait(
                    [asyncio.ensure_future(self.armed.wait()), jobs[0]],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                self._ready()
                await self._loop(stop, client, events, deployment_id)
            finally:
                stop.set()
                for job in jobs:
                    job.cancel()
                await asyncio.gather(*jobs, return_exceptions=True)

    async def _deployment(self, client: Any) -> UUID:
        """The triggered deployment's id; a warning if it reads another configuration."""
        from prefect.exceptions import ObjectNotFound

        name = self.settings.watch.deployment
        try:
            deployment = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise WatchError(
                f"no deployment {name} on the Prefect server: register the deployments first "
                "(prefect deploy --all --prefect-file deployments/prefect.yaml)"
            ) from None

        theirs = str((deployment.parameters or {}).get("config_path", ""))
        if theirs and Path(theirs).resolve() != self.config_path:
            log.warning(
                "deployment %s reads %s, not %s: its trigger will not match these events",
                name,
                theirs,
                self.config_path,
            )
        return UUID(str(deployment.id))

    async def _file_events(self, stop: asyncio.Event) -> None:
        """Mark a local warehouse dirty whenever something changes in its folder."""
        from watchfiles import awatch

        watched = roots(self.plan.local)
        if not watched:
            self.armed.set()
            return
        everything = {name for names in watched.values() for name in names}
        while not stop.is_set():
            try:
                for root in watched:
                    root.mkdir(parents=True, exist_ok=True)
                # the first yield (a change, or a second without one) comes once the watches
                # are in place: look again at every feed, for what changed before that
                async for changes in awatch(
                    *watched, stop_event=stop, debounce=50, step=20, rust_timeout=1000,
                    yield_on_timeout=True,
                ):  # fmt: skip
                    if not self.armed.is_set():
                        self.dirty |= everything
                        self.armed.set()
                    self.dirty |= touched([path for _, path in changes], watched)
            except Exception as exc:  # a folder removed or remounted: watch it again
                log.warning("file-system events stopped (%s); watching again", exc)
                self.dirty |= everything
                await _sleep(stop, RETRY_SECONDS)

    async def _poll(self, warehouse: RemoteWarehouse, stop: asyncio.Event) -> None:
        """Probe a remote warehouse every poll_interval (the first probe was at start)."""
        interval = _seconds(warehouse.poll_interval)
        loop = asyncio.get_running_loop()
        while True:
            await _sleep(stop, interval)
            if stop.is_set():
                return
            self.settling.observe(warehouse.name, await self._probe(warehouse.name), loop.time())

    async def _loop(self, stop: asyncio.Event, client: Any, events: Any, deployment: UUID) -> None:
        loop = asyncio.get_running_loop()
        local = {w.name for w in self.plan.local}
        while not stop.is_set():
            again = (self.dirty | set(self.settling.unsettled())) & local
            self.dirty -= again
            for name in sorted(again):
                self.settling.observe(name, await self._probe(name), loop.time())
            arrived = self.settling.settled()
            for name, fingerprint in arrived.items():
                log.info("%s: arrival %s (%s)", name, fingerprint.source, fingerprint.token)
            self.batch.add(arrived, loop.time())
            if self.batch.ready(loop.time()):
                try:
                    await self._send_when_free(client, events, deployment)
                except Exception as exc:  # the server is away: keep the batch, try again
                    log.warning("cannot reach the Prefect server (%s); retrying", exc)
                    await _sleep(stop, RETRY_SECONDS)
            await _sleep(stop, TICK_SECONDS)

    async def _send_when_free(self, client: Any, events: Any, deployment: UUID) -> None:
        """Send the batch as one event unless a run is in flight (then it waits for the next)."""
        now = asyncio.get_running_loop().time()
        runs = await _runs(client, deployment)
        if not self.gate.open(runs, now):
            return
        if self.gate.gave_up:
            log.warning(
                "the last event did not become a run within %.0f s: is the trigger of %s "
                "registered and enabled?",
                RUN_GRACE_SECONDS,
                self.settings.watch.deployment,
            )
            self.gate.gave_up = False
        feeds = self.batch.take()
        event = arrival_event(self.config_path, feeds)
        try:
            await events.emit(event)
        except Exception:
            self.batch.add(feeds, now)  # sent nothing: keep them for the next attempt
            raise
        self.gate.sent(datetime.now(UTC), now)
        self.seen.update(feeds)
        save_seen(self.seen_file, self.seen)
        log.info("sent %s for %s (event %s)", event.event, ", ".join(sorted(feeds)), event.id)


async def _runs(client: Any, deployment: UUID) -> list[RunView]:
    """The deployment's unfinished runs and its latest ones, as the gate sees them."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    of_deployment = FlowRunFilterDeploymentId(any_=[deployment])
    unfinished = FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, *map(StateType, ACTIVE)])
    )
    found = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=of_deployment, state=unfinished), limit=50
    )
    found += await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=of_deployment),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=10,
    )
    now = datetime.now(UTC)
    return [_view(run, now) for run in found]


def _view(run: Any, now: datetime) -> RunView:
    """A run is active when it runs, pauses, or is scheduled and due (a run set for later is not)."""
    state = run.state.type.value if run.state else "SCHEDULED"
    due = run.expected_start_time is None or run.expected_start_time <= now + timedelta(seconds=5)
    return RunView(run.created, state in ACTIVE or (state == "SCHEDULED" and due))


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, waking at once when the watcher is asked to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def run_watcher(settings: Settings, config_path: Path) -> None:
    """Run until SIGTERM or SIGINT; a batch not yet sent is sent by the next start."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await Watcher(settings, config_path).run(stop)
        except (httpx.HTTPError, OSError) as exc:  # at start: later ones are retried
            raise WatchError(
                f"cannot reach the Prefect server ({type(exc).__name__}: {exc}); is it running, "
                "and is PREFECT_API_URL right?"
            ) from None

    asyncio.run(main())
    log.info("stopped")
