"""A flow run ends without waiting out its heartbeat thread's sleep, and still sends heartbeats.

A real flow on the session's Prefect server, with heartbeats on (the server fixture turns
them off for every other test).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import prefect.flow_engine
import pytest
from prefect import flow

from flows.heartbeats import end_runs_without_joining_heartbeats, original

pytestmark = pytest.mark.slow


@dataclass
class Calls:
    join_on_exit: list[bool] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)  # the heartbeat threads


@pytest.fixture
def prefects_own(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """Prefect's unpatched `_send_heartbeats`, recording each call and the thread it starts."""
    unpatched = original()
    calls = Calls()

    @contextmanager
    def recording(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        calls.join_on_exit.append(join_on_exit)
        before = set(threading.enumerate())
        with unpatched(engine, join_on_exit=join_on_exit):
            calls.threads.extend(set(threading.enumerate()) - before)
            yield

    monkeypatch.setattr(prefect.flow_engine, "_send_heartbeats", recording)
    yield calls


@pytest.fixture
def heartbeats(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When each heartbeat of the flow runs was sent (time.monotonic)."""
    sent: list[float] = []
    emit = prefect.flow_engine.BaseFlowRunEngine._emit_flow_run_heartbeat

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        sent.append(time.monotonic())
        emit(self, *args, **kwargs)

    monkeypatch.setattr(prefect.flow_engine.BaseFlowRunEngine, "_emit_flow_run_heartbeat", counted)
    return sent


def test_a_run_sends_heartbeats_and_ends_without_joining_their_thread(
    prefect_api, prefects_own, heartbeats
):
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    assert end_runs_without_joining_heartbeats()

    @flow
    def short() -> int:
        time.sleep(0.3)  # the heartbeat thread sends its first one as it starts
        return 42

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        assert short() == 42
    ended = time.monotonic()
    assert prefects_own.join_on_exit == [False], "the engine asked to join the heartbeat thread"
    assert len(heartbeats) == 1 and heartbeats[0] < ended

    # the thread, not joined, sees the stop within its second and ends without another one
    (thread,) = prefects_own.threads
    assert thread.daemon
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(heartbeats) == 1


def test_it_is_applied_once_and_never_to_a_prefect_without_the_parameter(monkeypatch):
    assert end_runs_without_joining_heartbeats()
    patched = prefect.flow_engine._send_heartbeats
    assert end_runs_without_joining_heartbeats()
    assert prefect.flow_engine._send_heartbeats is patched  # not wrapped twice

    def other(engine: Any) -> AbstractContextManager[None]:
        raise AssertionError("never called here")

    monkeypatch.setattr(prefect.flow_engine, "_send_heartbeats", other)
    assert not end_runs_without_joining_heartbeats()
    assert prefect.flow_engine._send_heartbeats is other


def test_a_run_on_a_temporary_server_still_waits_for_the_thread(prefect_api, prefects_own):
    """No API URL: Prefect's temporary server, which the process stops as it exits."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    assert end_runs_without_joining_heartbeats()
    no_heartbeats = SimpleNamespace(heartbeat_seconds=None)  # the context starts no thread
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        prefect.flow_engine._send_heartbeats(no_heartbeats),
    ):
        pass
    with prefect.flow_engine._send_heartbeats(no_heartbeats):  # back on the session's server
        pass
    assert prefects_own.join_on_exit == [True, False]
