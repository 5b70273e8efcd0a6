"""The long stages' counts, and the plain lines the CLI prints when stderr is not a terminal."""

from __future__ import annotations

import io
import threading
import time

import pytest

from flows.cli.progress import PlainLines, progress_line
from tasks.report.progress import Progress

pytestmark = pytest.mark.fast


def test_counts_from_many_threads_add_up():
    progress = Progress()
    stage = progress.start("load", "chunk", total=800, items_label="products landed")

    def chunk() -> None:
        for _ in range(100):
            stage.advance(done=1, items=5)
        stage.retried()
        stage.waited(0.5)

    threads = [threading.Thread(target=chunk) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [snapshot] = progress.snapshot()
    assert (snapshot.done, snapshot.items, snapshot.retries) == (800, 4000, 8)
    assert snapshot.waited_seconds == 4.0


def test_eta_is_the_pace_so_far_and_only_while_running():
    progress = Progress()
    stage = progress.start("load", "chunk", total=4)
    assert progress.snapshot()[0].eta_seconds is None  # nothing done yet: no pace
    time.sleep(0.2)
    stage.advance(done=1)
    [running] = progress.snapshot()
    assert running.eta_seconds is not None
    assert 2.5 * running.elapsed_seconds <= running.eta_seconds <= 3.5 * running.elapsed_seconds
    stage.finish()
    assert progress.snapshot()[0].eta_seconds is None


def test_a_restarted_stage_counts_afresh_with_its_retries():
    progress = Progress()
    progress.start("catalog", "page").advance(done=3, items=750)
    progress.start("catalog", "page", retries=1).advance(done=1, items=250)
    [catalog] = progress.snapshot()
    assert (catalog.done, catalog.items, catalog.retries) == (1, 250, 1)


def test_a_stage_never_started_counts_for_nobody():
    progress = Progress()
    progress.stage("load").advance(done=1)
    assert progress.snapshot() == []


def test_the_plain_line_says_everything_on_one_line():
    progress = Progress()
    stage = progress.start(
        "load", "chunk", total=200, items_label="products landed", items_total=100_000
    )
    stage.advance(done=40, items=20_000)
    stage.failed()
    for _ in range(3):
        stage.retried()
    stage.waited(12)
    line = progress_line(progress.snapshot()[0])
    assert line.startswith(
        "progress: load: 41/200 chunks (1 failed), 20000/100000 products landed, 3 retried, "
        "waited 12.0s for the platform; "
    )
    assert " elapsed, ETA " in line
    assert "\n" not in line and "\x1b" not in line and "\r" not in line


def test_waiting_of_a_few_microseconds_is_not_worth_a_mention():
    progress = Progress()
    stage = progress.start("catalog", "page", items_label="products read")
    stage.advance(1, 250)
    stage.set_client_totals(retries=2, waited_seconds=0.00003)
    assert progress_line(progress.snapshot()[0]).startswith(
        "progress: catalog: 1 page, 250 products read, 2 retried; "
    )


def test_plain_lines_come_periodically_and_end_with_how_it_went():
    progress = Progress()
    out = io.StringIO()
    with PlainLines(progress, out, every=0.1):
        stage = progress.start("load", "chunk", total=5, items_label="products landed")
        for _ in range(5):
            time.sleep(0.12)
            stage.advance(done=1, items=2)
        stage.finish()
        quick = progress.start("read-back", "page", items_label="products read")
        quick.finish()  # over before a line was due: no line at all
        time.sleep(0.15)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3
    assert all(line.startswith("progress: load: ") for line in lines)
    assert lines[-1].startswith("progress: load: 5/5 chunks, 10 products landed; done in ")
    assert len([line for line in lines if "done in" in line]) == 1
