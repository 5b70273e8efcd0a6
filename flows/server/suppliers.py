"""A folder of supplier configurations, deployed side by side on one Prefect server.

One TOML file per supplier (or per Lightspeed account) in a folder. Each becomes its own set
of deployments (the templates of deployments/prefect.yaml, named after its tenant, with its
config_path and tags); all keep their state in one database, apart by tenant; configurations
on one API account share one request limit. Nothing here runs a sync.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from tasks.config.errors import ConfigError
from tasks.config.settings import account_name, load_settings
from tasks.lightspeed.account_limit import limit_name

TEMPLATE_FILE = Path(str(files("deployments") / "prefect.yaml"))
CONFIG_PARAMETER = "{{ $INVENTORY_SYNC_CONFIG }}"
TIMEZONE_PARAMETER = "{{ $INVENTORY_SYNC_TIMEZONE }}"
_EVERY_N_MINUTES = re.compile(r"^\*/(\d+)(\s.*)$")

Say = Callable[[str], None]


@dataclass(frozen=True)
class Supplier:
    """One configuration file of the folder, as deploying it needs to know it."""

    path: Path
    tenant: str
    database: str
    account: str
    account_limit: int | None

    @property
    def tags(self) -> list[str]:
        return [f"supplier:{self.tenant}", f"account:{self.account}"]


def read_suppliers(folder: Path, environ: Mapping[str, str] | None = None) -> list[Supplier]:
    """Every *.toml in the folder, validated; one error lists every file that is wrong."""
    files = sorted(p for p in folder.glob("*.toml") if p.is_file())
    if not files:
        raise ConfigError(f"{folder}: no supplier configuration (*.toml) in this folder")
    suppliers, problems = [], []
    for path in files:
        try:
            settings = load_settings(path, environ={} if environ is None else environ)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        suppliers.append(
            Supplier(
                path.resolve(),
                settings.state.tenant,
                settings.state.database_url,
                account_name(settings.lightspeed),
                settings.lightspeed.account_limit,
            )
        )
    if problems:
        raise ConfigError(
            f"{len(problems)} of {len(files)} configuration(s) are invalid:\n" + "\n".join(problems)
        )
    check_suppliers(suppliers)
    return suppliers


def check_suppliers(suppliers: list[Supplier]) -> None:
    """One tenant per file in each database, and one limit per account."""
    problems = []
    owners: dict[tuple[str, str], Path] = {}
    for supplier in suppliers:
        key = (supplier.database, supplier.tenant)
        if key in owners:
            problems.append(
                f"{owners[key].name} and {supplier.path.name} both keep tenant "
                f"{supplier.tenant!r} in {supplier.database}: give each its own state.tenant"
            )
        owners.setdefault(key, supplier.path)
    limits: dict[str, set[int | None]] = {}
    for supplier in suppliers:
        limits.setdefault(supplier.account, set()).add(supplier.account_limit)
    for account, found in sorted(limits.items()):
        if len(found) > 1:
            shown = ", ".join(sorted(str(n) for n in found))
            problems.append(
                f"account {account!r}: its configurations disagree on lightspeed.account_limit "
                f"({shown}); they share one limit, so give them the same"
            )
    if problems:
        raise ConfigError(
            "the supplier configurations conflict:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def deployments_for(
    suppliers: list[Supplier],
    template: Path = TEMPLATE_FILE,
    timezone: str = "UTC",
    worker_folder: Path | None = None,
) -> dict[str, Any]:
    """A prefect.yaml with each template deployment once per supplier.

    `worker_folder`: where the workers see the configurations' folder, if not at the path
    deploying reads it from (an image or a volume mounts it elsewhere).
    """
    try:
        document = yaml.safe_load(template.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the deployments template {template}: {exc}") from None
    deployments = []
    for supplier in suppliers:
        config = worker_folder / supplier.path.name if worker_folder else supplier.path
        for base in document["deployments"]:
            deployments.append(_for_supplier(base, supplier, str(config), timezone))
    return {**document, "deployments": deployments}


def _for_supplier(
    base: dict[str, Any], supplier: Supplier, config: str, timezone: str
) -> dict[str, Any]:
    parameters = {
        key: (config if value == CONFIG_PARAMETER else value)
        for key, value in (base.get("parameters") or {}).items()
    }
    schedules = [
        {
            **schedule,
            **(
                {"cron": staggered(schedule["cron"], supplier.tenant)} if "cron" in schedule else {}
            ),
            **({"timezone": timezone} if schedule.get("timezone") == TIMEZONE_PARAMETER else {}),
        }
        for schedule in base.get("schedules") or []
    ]
    triggers = [  # the arrival trigger matches this supplier's watcher, by its config's path
        {
            **trigger,
            "match": {
                key: (config if value == CONFIG_PARAMETER else value)
                for key, value in (trigger.get("match") or {}).items()
            },
        }
        for trigger in base.get("triggers") or []
    ]
    return {
        **base,
        **({"triggers": triggers} if triggers else {}),
        "name": f"{supplier.tenant}-{base['name']}",
        "description": f"{supplier.tenant}: {base.get('description', '')}".strip(),
        "tags": [*base.get("tags", []), *supplier.tags],
        "parameters": parameters,
        "schedules": schedules,
    }


def staggered(cron: str, tenant: str) -> str:
    """`*/15 …` moved to a minute of its own per tenant, so fifty suppliers do not start at once."""
    match = _EVERY_N_MINUTES.match(cron.strip())
    if match is None:
        return cron
    every = int(match[1])
    offset = int(hashlib.sha256(tenant.encode()).hexdigest(), 16) % every
    return f"{offset}-59/{every}{match[2]}"


def ensure_account_limits(client: Any, suppliers: list[Supplier]) -> list[tuple[str, str]]:
    """One global concurrency limit per API account that has account_limit, set to it.

    Returns (limit name, what was done) per account.
    """
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    done = []
    wanted = {s.account: s.account_limit for s in suppliers if s.account_limit is not None}
    for account, limit in sorted(wanted.items()):
        name = limit_name(account)
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )
            done.append((name, f"created, {limit} request(s) in flight"))
            continue
        if found.limit == limit and found.active:
            done.append((name, "unchanged"))
            continue
        client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
        )
        done.append((name, f"{found.limit} → {limit} request(s) in flight"))
    return done


@contextmanager
def written_prefect_file(document: dict[str, Any]) -> Iterator[Path]:
    """The generated deployments in a temporary prefect.yaml, for `prefect deploy --all`."""
    with tempfile.TemporaryDirectory(prefix="inventory-sync-suppliers-") as folder:
        path = Path(folder) / "prefect.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        yield path


def work_pools(document: dict[str, Any]) -> dict[str, bool]:
    """The deployments' work pools, each with whether its runs are containers (an `image`)."""
    pools: dict[str, bool] = {}
    for deployment in document["deployments"]:
        pool = deployment.get("work_pool") or {}
        image = "image" in (pool.get("job_variables") or {})
        pools[str(pool.get("name"))] = pools.get(str(pool.get("name")), False) or image
    return pools
