"""Progress on a long run, as the CLI shows it: plain lines for cron and CI, a live display in a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
from pathlib import Path

import pytest
from builders import csv_warehouse, pid, product
from cli_runs import CLI, cli, cli_env, flow_run_of

from sandbox.server import Fault

pytestmark = pytest.mark.slow
N = 30  # products, one per chunk, each PUT slowed down: a load of a few seconds
LINE = re.compile(r"^progress: load: (\d+)/30 chunks, (\d+)/30 products landed; (.*)$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def slow_load(tmp_path, sandbox, write_config) -> Path:
    sandbox.reset(products=[product(f"S{i:02d}") for i in range(N)])
    sandbox.add_fault(Fault(delay=0.2, times=1000))
    (tmp_path / "east.csv").write_text("sku,qty\n" + "".join(f"S{i:02d},{i}\n" for i in range(N)))
    return write_config(
        csv_warehouse("east", "east.csv"), lightspeed="chunk_size = 1\nmax_concurrency = 2"
    )


def test_without_a_terminal_progress_comes_as_plain_periodic_lines(
    slow_load, sandbox, prefect_api, tmp_path
):
    result = cli(
        "run", "--config", str(slow_load), "--progress-every", "0.5", api=prefect_api, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [LINE.match(line) for line in result.stderr.splitlines()]
    counts = [(int(m[1]), int(m[2])) for m in lines if m]
    assert len(counts) >= 3, result.stderr  # periodic, not just one at the end
    assert counts == sorted(counts) and counts[-1] == (N, N)
    assert any(0 < chunks < N for chunks, _ in counts)  # some while the load was under way
    last = [m for m in lines if m][-1]
    assert last[3].startswith("done in ")
    assert any("ETA" in m[3] for m in lines if m)
    assert "\x1b" not in result.stderr + result.stdout and "\r" not in result.stderr
    assert "Result: OK" in result.stdout
    assert sandbox.quantities() == {pid(f"S{i:02d}"): i for i in range(N)}


def run_in_a_terminal(config: Path, api: str, cwd: Path) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal (140 columns) as its stdin, stdout and stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    env = cli_env(api=api, TERM="xterm-256color", COLUMNS="140")
    process = subprocess.Popen(
        [*CLI, "run", "--config", str(config)],
        cwd=cwd,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    return process.wait(timeout=60), output.decode()


def test_in_a_terminal_a_live_display_and_the_summary_unchanged(
    slow_load, sandbox, prefect_api, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    status, output = run_in_a_terminal(slow_load, prefect_api, tmp_path)
    assert status == 0, output
    assert "\x1b[2K" in output and "\x1b[1A" in output  # lines redrawn in place: a live display
    frames = [ANSI.sub("", line) for line in output.replace("\r\n", "\n").split("\r")]
    rows = [line for frame in frames for line in frame.splitlines() if line.startswith("load ")]
    assert any(re.search(r" ([1-9]|[12]\d)/30 chunks, \d+/30 products landed", r) for r in rows)
    assert any("30/30 chunks, 30/30 products landed" in r and "done in" in r for r in rows)
    assert "Traceback" not in output

    with get_client(sync_client=True) as client:
        [summary] = [
            a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_of(slow_load).id])
                )
            )
            if a.key == "sync-summary"
        ]
    rendered = summary.data.removeprefix("```\n").removesuffix("\n```")
    assert rendered + "\n" in output.replace("\r\n", "\n")  # the summary as before, untouched
    assert sandbox.quantities() == {pid(f"S{i:02d}"): i for i in range(N)}
