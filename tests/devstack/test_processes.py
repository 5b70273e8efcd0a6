"""The process helper the local stack, benchmarks and test servers share: start, wait, stop a tree."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from devstack.processes import (
    ManagedProcess,
    NotReady,
    descendants,
    free_port,
    http_ok,
    is_running,
    port_in_use,
    stop_processes,
    wait_for_listener,
)

pytestmark = pytest.mark.fast


def shell(script: str, log: Path) -> ManagedProcess:
    """`bash -c script`, started, its output in `log`."""
    return ManagedProcess("shell", ["bash", "-c", script], dict(os.environ), log).start()


def test_stopping_a_process_also_stops_what_it_started_in_a_session_of_its_own(tmp_path):
    # like the worker, whose flow runs live in their own sessions and survive a group kill
    script = "setsid sleep 300 & sleep 300"
    child = ManagedProcess("shell", ["bash", "-c", script], dict(os.environ), tmp_path / "log")
    child.start()
    assert child.pid is not None
    deadline = time.monotonic() + 10
    while len(family := descendants(child.pid)) < 2:
        assert time.monotonic() < deadline, family
        time.sleep(0.05)
    child.stop(grace=5)
    assert [p for p in family if is_running(p)] == []


def test_port_in_use_sees_a_listener_and_only_a_listener():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


def test_a_process_that_ignores_sigterm_is_killed_once_the_grace_is_over(tmp_path):
    child = shell("trap '' TERM; sleep 300 & wait", tmp_path / "log")
    assert child.pid is not None
    deadline = time.monotonic() + 10
    while not (family := descendants(child.pid)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    leader = psutil.Process(child.pid)
    began = time.monotonic()
    child.stop(grace=0.5)
    assert time.monotonic() - began < 10
    assert not is_running(leader) and [p for p in family if is_running(p)] == []


def test_the_log_holds_the_output_and_its_tail_shows_the_end(tmp_path):
    child = shell("printf 'one\\ntwo\\nthree\\n'; exit 4", tmp_path / "logs" / "shell.log")
    deadline = time.monotonic() + 10
    while child.exit_code() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert child.exit_code() == 4
    assert child.log_tail(2) == "two\nthree"
    child.stop()
    assert child.exit_code() is None and child.pid is None  # forgotten once stopped


@pytest.mark.parametrize(
    ("script", "timeout", "message"),
    [
        ("echo boom; exit 3", 10, "the shell exited with status 3; the end of {log}:\nboom"),
        ("sleep 300", 0.6, "the shell did not answer within 1 s"),
    ],
)
def test_waiting_for_a_process_that_never_gets_ready_says_why(tmp_path, script, timeout, message):
    child = shell(script, tmp_path / "log")
    try:
        with pytest.raises(NotReady) as raised:
            child.wait_until_ready(lambda: False, timeout)
    finally:
        child.stop(grace=1)
    assert str(raised.value) == message.format(log=tmp_path / "log")


def test_waiting_ends_as_soon_as_the_process_is_ready(tmp_path):
    child = shell("sleep 300", tmp_path / "log")
    calls: list[float] = []
    try:
        child.wait_until_ready(lambda: calls.append(time.monotonic()) or len(calls) == 2, 30)
    finally:
        child.stop(grace=1)
    assert len(calls) == 2


def test_a_finished_child_is_not_running_even_before_it_is_reaped():
    child = subprocess.Popen(["true"])
    process = psutil.Process(child.pid)
    deadline = time.monotonic() + 10
    while is_running(process):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert process.status() == psutil.STATUS_ZOMBIE  # still in the table, but not running
    assert child.wait(10) == 0
    stop_processes([process])  # nothing to stop: no error


def test_a_free_port_binds_and_a_listener_is_seen_only_while_it_listens():
    port = free_port()
    assert not port_in_use(port) and not wait_for_listener(port, timeout=0.2)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert wait_for_listener(port, timeout=5)


def test_http_ok_is_true_only_for_a_2xx(sandbox):
    assert http_ok(f"{sandbox.url}/_sandbox/faults")
    assert not http_ok(f"{sandbox.url}/no-such-path")  # 404
    assert not http_ok(f"http://127.0.0.1:{free_port()}/")  # nobody listens
