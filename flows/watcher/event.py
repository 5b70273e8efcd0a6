"""The `inventory-sync.feed.arrived` event: which warehouses changed, and each feed's fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect.events.schemas.events import Event, RelatedResource, Resource

from tasks.sources.feed import Fingerprint

ARRIVED = "inventory-sync.feed.arrived"
CONFIG_LABEL = "inventory-sync.config"
WAREHOUSES_LABEL = "inventory-sync.warehouses"


def feeds_resource_id(config_path: Path) -> str:
    """One resource per configuration's feeds, whatever spelling of its path."""
    digest = hashlib.sha256(str(config_path.resolve()).encode()).hexdigest()[:12]
    return f"inventory-sync.feeds.{digest}"


def arrival_event(config_path: Path, feeds: Mapping[str, Fingerprint]) -> Event:
    """One event for a batch of arrivals; the trigger reads `payload.warehouses` into the run."""
    names = sorted(feeds)
    config = str(config_path.resolve())
    resource: dict[str, str] = {
        "prefect.resource.id": feeds_resource_id(config_path),
        "prefect.resource.name": f"feeds of {config_path.name}",
        CONFIG_LABEL: config,
        WAREHOUSES_LABEL: ",".join(names),
    }
    related = [
        RelatedResource(
            {
                "prefect.resource.id": f"inventory-sync.warehouse.{name}",
                "prefect.resource.role": "warehouse",
                "prefect.resource.name": name,
                "inventory-sync.fingerprint": feeds[name].token,
                "inventory-sync.source": feeds[name].source,
            }
        )
        for name in names
    ]
    payload: dict[str, Any] = {
        "warehouses": names,
        "feeds": {
            name: {"source": feeds[name].source, "fingerprint": feeds[name].token} for name in names
        },
        "config_path": config,
    }
    return Event(event=ARRIVED, resource=Resource(resource), related=related, payload=payload)
