"""The fingerprints the watcher last sent, kept in a small file so a restart loses no arrival."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from tasks.sources.feed import Fingerprint

FILE_NAME = "watcher-fingerprints.json"


def seen_path(state_dir: str | Path) -> Path:
    """Where a configuration's watcher keeps its fingerprints: beside the sync's state."""
    return Path(state_dir) / FILE_NAME


def load_seen(path: Path) -> dict[str, Fingerprint] | None:
    """The fingerprints last sent per warehouse; None if the watcher never ran on this state."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: every feed then counts as new, which costs one extra run
    feeds = data.get("feeds", {}) if isinstance(data, dict) else {}
    return {
        name: Fingerprint(str(entry["source"]), str(entry["token"]))
        for name, entry in feeds.items()
        if isinstance(entry, dict) and {"source", "token"} <= set(entry)
    }


def save_seen(path: Path, feeds: Mapping[str, Fingerprint]) -> None:
    """Replace the file atomically (write, fsync, rename), so a kill leaves the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"feeds": {name: {"source": f.source, "token": f.token} for name, f in feeds.items()}}
    scratch = path.with_name(path.name + ".tmp")
    with scratch.open("w", encoding="utf-8") as handle:
        json.dump(body, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, path)
