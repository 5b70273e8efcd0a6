"""Sets up a Prefect server for unattended syncs: the work pool, the deployments, the automations."""

from __future__ import annotations

import base64
import copy
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import yaml

from flows.server.retention import describe_server_retention

# The folder holding flows/ (a checkout, or site-packages): runs start there, so that the
# deployments' entrypoint flows/sync.py resolves.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PREFECT_FILE = Path(str(files("deployments") / "prefect.yaml"))
AUTOMATIONS_FILE = Path(str(files("deployments") / "automations.yaml"))
FLOW_NAME = "inventory-sync"
POOL_CONCURRENCY = 1  # one sync at a time on the pool, whichever deployment it comes from
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
PREFECT_HEARTBEAT_SECONDS = 180  # Prefect's default when a deployment does not set it
MIN_HEARTBEAT_SECONDS = 30  # Prefect's minimum
EVENTS_WEBHOOK_BLOCK = "inventory-sync-events"
NOTIFY_PLACEHOLDER = "NOTIFICATION_BLOCK_ID"
EVENTS_WEBHOOK_PLACEHOLDER = "EVENTS_WEBHOOK_BLOCK_ID"

# automations.yaml names the code relies on: their windows are filled in here
FAILED = "inventory-sync failed"
HEARTBEAT_LOST = "inventory-sync heartbeat lost"
CRASH_REPORT = "inventory-sync crash report"
NO_SUCCESS = "inventory-sync no success"
RUN_LATE = "inventory-sync run late"
FEED_STALE = "inventory-sync feed stale"
AUTH_FAILED = "inventory-sync auth failed"

Say = Callable[[str], None]


class SetupError(Exception):
    """The server cannot be set up as asked; the message says why and what to do."""


@dataclass(frozen=True)
class SetupOptions:
    """What `inventory-sync deploy` is asked to set up."""

    config_path: Path
    timezone: str = "UTC"
    notify: str | None = None  # a notification block, "name" or "block-type-slug/name"
    missed_heartbeats: int = 3
    no_success_after: timedelta = timedelta(minutes=45)
    late_after: timedelta = timedelta(minutes=10)
    prefect_file: Path = PREFECT_FILE
    automations_file: Path = AUTOMATIONS_FILE
    suppliers: bool = (
        False  # config_path is a folder of supplier configurations (flows/server/suppliers.py)
    )
    pool_limit: int | None = None  # with suppliers: runs at once on the pool (none: no limit)
    worker_folder: Path | None = None  # with suppliers: where the workers see the folder


@dataclass
class SetupReport:
    """What a setup found and did, one line per object, said as it goes."""

    heartbeat_seconds: int = PREFECT_HEARTBEAT_SECONDS
    say: Say = print
    lines: list[str] = field(default_factory=list)
    deployments: dict[str, UUID] = field(default_factory=dict)
    automations: dict[str, UUID] = field(default_factory=dict)

    def note(self, kind: str, name: str, change: str) -> None:
        self.lines.append(f"{kind} {name!r}: {change}")
        self.say(self.lines[-1])

    def tell(self, line: str) -> None:
        """A finding that changes nothing (said, and kept with the lines)."""
        self.lines.append(line)
        self.say(line)


@contextmanager
def prefect_api(api_url: str) -> Iterator[Any]:
    """A sync client for this server; blocks saved meanwhile go to it too."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as c:
        yield c


def set_up_server(
    api_url: str,
    options: SetupOptions,
    say: Say = print,
    environ: Mapping[str, str] | None = None,
) -> SetupReport:
    """Create or update the work pools, the deployments and every automation; idempotent.

    One configuration, or with `options.suppliers` a folder of them (flows/server/suppliers.py):
    then each supplier gets the template's deployments, and each API account its request limit.
    """
    from dataclasses import replace

    from flows.server import suppliers as folder

    found = folder.read_suppliers(options.config_path) if options.suppliers else []
    if options.suppliers:
        document = folder.deployments_for(
            found, options.prefect_file, options.timezone, options.worker_folder
        )
    else:
        document = {"deployments": read_deployments_file(options.prefect_file)}
    deployments = document["deployments"]
    report = SetupReport(heartbeat_seconds(deployments), say)
    if options.suppliers:
        report.note("folder", str(options.config_path), f"{len(found)} supplier(s)")
    with prefect_api(api_url) as client:
        if (problem := client.api_healthcheck()) is not None:
            raise SetupError(f"the Prefect server at {api_url} does not answer: {problem}")
        if options.notify:
            find_notification_block(client, options.notify)  # refuse a wrong name before anything
        report.tell(f"retention on this server: {describe_server_retention(client)}")
        pools = (
            folder.work_pools(document)
            if options.suppliers
            else dict.fromkeys(work_pool_names(deployments), False)
        )
        for pool, runs_images in sorted(pools.items()):
            if options.suppliers:
                # Not one run at a time as for one supplier: each tenant's run lock and each
                # deployment's own limit keep a supplier's runs apart; a worker's --limit bounds
                # what one machine runs at once.
                change = ensure_work_pool(
                    client, pool, options.pool_limit, creatable=not runs_images,
                    description="Runs inventory-sync flow runs of many suppliers as local processes.",
                )  # fmt: skip
            else:
                change = ensure_work_pool(client, pool)
            report.note("work pool", pool, change)
        for name, change in folder.ensure_account_limits(client, found):
            report.note("concurrency limit", name, change)
    names = [str(d["name"]) for d in deployments]
    with (
        folder.written_prefect_file(document)
        if options.suppliers
        else nullcontext(options.prefect_file) as prefect_file
    ):
        registering = replace(options, prefect_file=prefect_file)
        report.deployments = register_deployments(api_url, registering, names, environ)
        if options.suppliers:
            for supplier in found:
                mine = [n for n in names if n.startswith(f"{supplier.tenant}-")]
                shown = ", ".join(f"{FLOW_NAME}/{n}" for n in mine)
                report.note("supplier", supplier.tenant, f"{shown} ({supplier.path.name})")
        else:
            for name in names:
                report.note("deployment", f"{FLOW_NAME}/{name}", f"registered from {prefect_file}")
        set_up_automations(api_url, registering, report)
    return report


# the deployments file


def read_deployments_file(path: Path) -> list[dict[str, Any]]:
    """The deployments of a prefect.yaml, anchors resolved."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SetupError(f"cannot read the deployments file {path}: {exc}") from None
    found = data.get("deployments") if isinstance(data, dict) else None
    if not found:
        raise SetupError(f"{path} defines no deployments")
    return list(found)


def work_pool_names(deployments: list[dict[str, Any]]) -> set[str]:
    """The work pools the deployments run on."""
    return {str((d.get("work_pool") or {}).get("name") or FLOW_NAME) for d in deployments}


def heartbeat_seconds(deployments: list[dict[str, Any]]) -> int:
    """The longest heartbeat period among the deployments (from their job_variables env)."""
    periods = []
    for deployment in deployments:
        env = ((deployment.get("work_pool") or {}).get("job_variables") or {}).get("env") or {}
        raw = env.get(HEARTBEAT_ENV, PREFECT_HEARTBEAT_SECONDS)
        try:
            period = int(str(raw))
        except ValueError:
            raise SetupError(
                f"deployment {deployment.get('name')!r}: {HEARTBEAT_ENV} must be a whole number "
                f"of seconds, not {raw!r}"
            ) from None
        if period < MIN_HEARTBEAT_SECONDS:
            raise SetupError(
                f"deployment {deployment.get('name')!r}: {HEARTBEAT_ENV} is {period}; Prefect's "
                f"minimum is {MIN_HEARTBEAT_SECONDS} seconds"
            )
        periods.append(period)
    return max(periods)


# the work pool


def ensure_work_pool(
    client: Any,
    name: str,
    limit: int | None = POOL_CONCURRENCY,
    *,
    creatable: bool = True,
    description: str = "Runs inventory-sync flow runs as local processes, one at a time.",
) -> str:
    """A pool whose concurrency limit is `limit` (one sync at a time by default).

    Created as a `process` pool if missing, unless not `creatable`: a docker or kubernetes pool
    is never guessed, because its type needs its worker package.
    """
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        if not creatable:
            raise SetupError(
                f"work pool {name!r} does not exist: create it first, e.g. "
                f"`prefect work-pool create {name} --type docker` (or kubernetes)"
            ) from None
        client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type="process",
                description=description,
                base_job_template=ProcessWorker.get_default_base_job_template(),
                concurrency_limit=limit,
            )
        )
        return f"created (type process, concurrency limit {limit or 'none'})"
    if pool.concurrency_limit == limit:
        return "unchanged"
    client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))
    return f"concurrency limit {pool.concurrency_limit or 'none'} → {limit or 'none'}"


# the deployments


def register_deployments(
    api_url: str, options: SetupOptions, names: list[str], environ: Mapping[str, str] | None = None
) -> dict[str, UUID]:
    """`prefect deploy --all` on the deployments file, from the project root; their ids."""
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    env = {
        **(os.environ if environ is None else environ),
        "PREFECT_API_URL": api_url,
        "INVENTORY_SYNC_CONFIG": str(options.config_path.resolve()),
        "INVENTORY_SYNC_TIMEZONE": options.timezone,
        "INVENTORY_SYNC_PYTHON": sys.executable,  # the process pool's command (prefect.yaml)
    }
    try:
        result = subprocess.run(
            [*command, "--prefect-file", str(options.prefect_file.resolve())],
            cwd=PROJECT_ROOT,  # each run starts in this folder: the pull step says so
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        raise SetupError("prefect deploy did not finish within 600 s") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise SetupError("prefect deploy failed:\n" + "\n".join(output[-30:]))
    with prefect_api(api_url) as client:
        return {name: client.read_deployment_by_name(f"{FLOW_NAME}/{name}").id for name in names}


# the automations


def set_up_automations(
    api_url: str, options: SetupOptions, report: SetupReport | None = None
) -> SetupReport:
    """The blocks they use, then every automation in the file, created or updated by name."""
    if report is None:
        deployments = read_deployments_file(options.prefect_file)
        report = SetupReport(heartbeat_seconds(deployments), say=lambda _: None)
    windows = {
        HEARTBEAT_LOST: timedelta(seconds=options.missed_heartbeats * report.heartbeat_seconds),
        NO_SUCCESS: options.no_success_after,
        RUN_LATE: options.late_after,
    }
    with prefect_api(api_url) as client:
        notify = find_notification_block(client, options.notify) if options.notify else None
        webhook, change = ensure_events_webhook(api_url)
        report.note("webhook block", EVENTS_WEBHOOK_BLOCK, change)
        wanted = automations_from_file(
            options.automations_file, windows=windows, notify=notify, events_webhook=webhook
        )
        for automation in wanted:
            automation_id, change = ensure_automation(client, automation)
            report.automations[automation.name] = automation_id
            report.note("automation", automation.name, change)
    return report


def find_notification_block(client: Any, ref: str) -> UUID:
    """The id of a notification block given as "name" or "block-type-slug/name"."""
    from prefect.client.schemas.objects import BlockDocument

    slug, _, name = ref.rpartition("/")
    body: dict[str, Any] = {
        "block_documents": {"name": {"any_": [name]}, "is_anonymous": {"eq_": False}},
        "include_secrets": False,
    }
    if slug:
        body["block_types"] = {"slug": {"any_": [slug]}}
    response = client.request("POST", "/block_documents/filter", json=body)
    response.raise_for_status()
    found = [BlockDocument.model_validate(item) for item in response.json()]
    if not found:
        raise SetupError(
            f"no block named {ref!r} on this server: create the notification block first (UI: "
            "Blocks → +, e.g. Slack Webhook, Email, Custom Webhook) and pass its name to --notify"
        )
    if len(found) > 1:
        kinds = ", ".join(sorted(f"{b.block_type.slug}/{b.name}" for b in found if b.block_type))
        raise SetupError(f"several blocks are named {name!r} ({kinds}): pass one as TYPE/NAME")
    block = found[0]
    capabilities = block.block_schema.capabilities if block.block_schema else []
    if "notify" not in capabilities:
        kind = block.block_type.name if block.block_type else "this"
        raise SetupError(f"block {ref!r} is a {kind} block, which cannot send notifications")
    return block.id


def events_webhook_headers() -> dict[str, str]:
    """JSON, and the credentials this command itself uses for the API, if any."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    headers = {"Content-Type": "application/json"}
    if key := PREFECT_API_KEY.value():
        headers["Authorization"] = f"Bearer {key}"
    elif auth := PREFECT_API_AUTH_STRING.value():
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    return headers


def ensure_events_webhook(api_url: str) -> tuple[UUID, str]:
    """The Webhook block through which the server posts events to its own API."""
    from prefect.blocks.webhook import Webhook

    url = f"{api_url.rstrip('/')}/events"
    headers = events_webhook_headers()
    existing: Webhook | None
    try:
        existing = cast(Webhook, Webhook.load(EVENTS_WEBHOOK_BLOCK))
    except ValueError:
        existing = None
    if existing is not None and (
        existing.method,
        existing.url.get_secret_value(),
        existing.headers.get_secret_value(),
    ) == ("POST", url, headers):
        return cast(UUID, existing._block_document_id), "unchanged"
    block = Webhook(method="POST", url=url, headers=headers, allow_private_urls=True)  # type: ignore[arg-type]
    block_id = cast(UUID, block.save(EVENTS_WEBHOOK_BLOCK, overwrite=True))
    return block_id, "created" if existing is None else f"updated (posts to {url})"


def automations_from_file(
    path: Path,
    *,
    windows: dict[str, timedelta],
    notify: UUID | None,
    events_webhook: UUID,
) -> list[Any]:
    """The automations of automations.yaml with windows and blocks filled in, validated."""
    from prefect.events.schemas.automations import AutomationCore
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        listed = list(data["automations"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise SetupError(f"cannot read the automations file {path}: {exc!r}") from None
    missing = set(windows) - {a.get("name") for a in listed}
    if missing:
        raise SetupError(f"{path} lacks the automation(s) {sorted(missing)}, which deploy sizes")
    automations = []
    for raw in listed:
        spec = copy.deepcopy(raw)
        if spec["name"] in windows:
            spec["trigger"]["within"] = windows[spec["name"]].total_seconds()
        spec["actions"] = [_fill_action(a, notify, events_webhook) for a in spec["actions"]]
        try:
            automations.append(AutomationCore.model_validate(spec))
        except ValidationError as exc:
            raise SetupError(f"{path}: automation {spec['name']!r}: {exc}") from None
    return automations


def _fill_action(action: dict[str, Any], notify: UUID | None, events_webhook: UUID) -> Any:
    """Put the real block ids in place of the file's placeholders."""
    block = action.get("block_document_id")
    if block == NOTIFY_PLACEHOLDER:
        return {"type": "do-nothing"} if notify is None else {**action, "block_document_id": notify}
    if block == EVENTS_WEBHOOK_PLACEHOLDER:
        return {**action, "block_document_id": events_webhook}
    return action


def ensure_automation(client: Any, wanted: Any) -> tuple[UUID, str]:
    """Create the automation, or update the one of that name; delete any duplicates of it."""
    existing = sorted(client.read_automations_by_name(wanted.name), key=lambda a: str(a.id))
    if not existing:
        return client.create_automation(wanted), "created"
    keep, *duplicates = existing
    for duplicate in duplicates:
        client.delete_automation(duplicate.id)
    removed = f"; {len(duplicates)} duplicate(s) deleted" if duplicates else ""
    # a user's pause (UI or `prefect automation pause`) survives a redeploy
    wanted = wanted.model_copy(update={"enabled": keep.enabled})
    if _comparable(keep) == _comparable(wanted):
        return keep.id, "unchanged" + removed
    client.update_automation(keep.id, wanted)
    return keep.id, "updated" + removed


def _comparable(automation: Any) -> dict[str, Any]:
    """An automation's definition without the ids the server or the client assign."""
    from prefect.events.schemas.automations import AutomationCore

    data = AutomationCore.model_validate(automation.model_dump()).model_dump()
    return _without_ids(data)


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value
