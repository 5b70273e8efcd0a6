"""Where the paths written in the config file point, and the state folder read from the TOML alone.

No pydantic here: the CLI reads the state folder this way to take its run lock before it loads
anything heavy, so a busy state is told at once.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

DEFAULT_STATE_DIR = "state"


def from_config_folder(value: str, base_dir: str | None) -> str:
    """A path or glob from the config file, taken relative to the file's folder unless absolute."""
    if base_dir is None or Path(value).expanduser().is_absolute():
        return str(Path(value).expanduser())
    return str(Path(base_dir) / value)


def state_folder(config: str | Path) -> Path | None:
    """The config's `state.dir`, as the validated settings will have it; None if the TOML can't say.

    Also None when the state is elsewhere than the default tenant of a folder (`state.url`, or
    a `state.tenant`): its lock is known only once the settings are read.
    """
    path = Path(config).expanduser().resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    state = data.get("state", {})
    if isinstance(state, dict) and ("url" in state or state.get("tenant", "default") != "default"):
        return None
    folder = state.get("dir", DEFAULT_STATE_DIR) if isinstance(state, dict) else None
    return Path(from_config_folder(folder, str(path.parent))) if isinstance(folder, str) else None
