"""The local stack's own guarantees, without a Prefect server: clear refusals, nothing left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from devstack.local_stack import LocalStack

pytestmark = pytest.mark.fast


def local_stack(*args: str, tmp_path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack.cli",
            "local-stack",
            "--dir",
            str(tmp_path / "demo"),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_taken_ui_port_is_refused_with_what_to_do(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = local_stack("--port", str(port), "--sandbox-port", "0", tmp_path=tmp_path)
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "make run PORT=" in result.stderr
    assert not (tmp_path / "prefect").exists(), "nothing started before the check"


def test_an_unknown_timezone_is_refused_before_anything_starts(tmp_path):
    result = local_stack("--timezone", "Mars/Olympus", "--port", "0", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "unknown timezone 'Mars/Olympus'" in result.stderr


def test_a_taken_sandbox_port_moves_the_sandbox_rather_than_stopping(tmp_path):
    said: list[str] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = LocalStack(tmp_path, tmp_path, port=0, sandbox_port=port, say=said.append)
        stack.check()
    assert stack.sandbox_port == 0
    assert said == [f"Port {port} is taken: the sandbox API takes any free port."]
