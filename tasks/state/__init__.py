"""What the sync remembers between runs, per tenant, in SQLite (embedded) or PostgreSQL (shared).

The store itself (polars, SQLAlchemy) is imported on first use, so that the run lock and the
state's location can be used by the CLI before it loads anything heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.state.lock import StateBusy

if TYPE_CHECKING:
    from tasks.state.location import DEFAULT_TENANT, StateLocation
    from tasks.state.store import FeedMark, KeptCatalog, RefreshProgress, StateStore

__all__ = [
    "DEFAULT_TENANT",
    "FeedMark",
    "KeptCatalog",
    "RefreshProgress",
    "StateBusy",
    "StateLocation",
    "StateStore",
]
_WHERE = {"DEFAULT_TENANT": "location", "StateLocation": "location"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        from importlib import import_module

        return getattr(import_module(f"tasks.state.{_WHERE.get(name, 'store')}"), name)
    raise AttributeError(f"module 'tasks.state' has no attribute {name!r}")
