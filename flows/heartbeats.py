"""A flow run's end without waiting out the heartbeat thread's sleep (0-1 s of every run).

Prefect 3.9 sends a flow run's heartbeats from a daemon thread that sleeps in steps of one
second (`_send_heartbeats` in the module `prefect.flow_engine`). When the flow function
returns, the sync engine sets the stop event and joins the thread, so every run waits until
the thread's current second is over, a wait a short cycle and each feed arrival's run feel.

Prefect's own async engine does not join (`join_on_exit=False`): the thread sees the stop
event within the second and returns without sending another heartbeat, and it is a daemon,
so it never holds a process up. The sync engine is given the same here. Heartbeats during
the run are untouched, so the heartbeat-lost automation (flows/server/setup.py) sees them.
If Prefect's function ever loses that parameter, nothing is changed.

Except for a run on Prefect's temporary server (no API URL set): the process stops that
server as it exits, and without the join it would stop that server while it is still
recording the run's last events, which prints the server's traceback ("Cancelled via cancel
scope") and loses the last log lines ("Error logging to API"). Such a run keeps the join.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import prefect.flow_engine
from prefect.settings import get_current_settings

ORIGINAL = "_inventory_sync_original"


def end_runs_without_joining_heartbeats() -> bool:
    """Make the sync flow engine stop its heartbeat thread without joining it; idempotent.

    Not on a temporary server (see above).

    Returns whether the engine does so (False: this Prefect has no such parameter).
    """
    current = prefect.flow_engine._send_heartbeats
    if hasattr(current, ORIGINAL):
        return True
    if "join_on_exit" not in inspect.signature(current).parameters:
        return False

    def send_heartbeats(engine: Any, join_on_exit: bool = True) -> AbstractContextManager[None]:
        on_a_temporary_server = not get_current_settings().api.url
        return current(engine, join_on_exit=join_on_exit and on_a_temporary_server)

    setattr(send_heartbeats, ORIGINAL, current)
    prefect.flow_engine._send_heartbeats = send_heartbeats  # type: ignore[assignment]
    return True


def original() -> Callable[..., AbstractContextManager[None]]:
    """Prefect's own `_send_heartbeats`, patched or not (for the tests)."""
    current = prefect.flow_engine._send_heartbeats
    return getattr(current, ORIGINAL, current)
