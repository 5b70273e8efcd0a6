"""Field types the configuration's sections share: paths from the file's folder, URLs, durations."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from tasks.config.paths import from_config_folder


class Section(BaseModel):
    """A table of the TOML file: unknown keys are errors, values never change after parsing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def relative_to_config(value: str, info: ValidationInfo) -> str:
    """Resolve a path or glob written in the config against the config file's folder."""
    return from_config_folder(value, (info.context or {}).get("base_dir"))


def http_url(value: str) -> str:
    """An http(s) root URL, without a trailing slash."""
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> Any:
    """Accept 90 (seconds), "90s", "15m", "2h", "1d", or anything pydantic reads as a timedelta."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
