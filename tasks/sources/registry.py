"""The one list of warehouse kinds. Adding a kind: a module with its SourceKind, and a line here."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from tasks.sources import csv, http, parquet, sftp, sql
from tasks.sources.feed import SourceKind

KINDS: dict[str, SourceKind] = {}


def register(kind: SourceKind) -> None:
    """Make a kind of source known to the configuration and to the extract stage."""
    KINDS[kind.name] = kind


def names() -> tuple[str, ...]:
    """The registered kinds, in registration order (as error messages list them)."""
    return tuple(KINDS)


def kind_of(warehouse: Any) -> SourceKind:
    """The registered kind of a configured warehouse."""
    return KINDS[warehouse.kind]


def warehouse_type() -> Any:
    """The settings of any registered kind, told apart by `kind`."""
    models = tuple(kind.settings for kind in KINDS.values())
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007


for _kind in (csv.KIND, parquet.KIND, sftp.KIND, http.KIND, sql.KIND):
    register(_kind)
