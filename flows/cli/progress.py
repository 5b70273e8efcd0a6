"""How the CLI shows the long stages while they run: a live display in a terminal, plain lines otherwise.

The counts come from `tasks.report.progress`; the final summary is printed afterwards, unchanged.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tasks.durations import duration
from tasks.report.progress import Progress, StageSnapshot, current

LIVE_REFRESHES_PER_SECOND = 4


def counts(stage: StageSnapshot) -> str:
    """What the stage has done so far, e.g. `1 page, 250 products read`, `40/200 chunks, ...`."""
    done = f"{stage.done}/{stage.total}" if stage.total is not None else str(stage.done)
    unit = stage.unit + ("" if (stage.total or stage.done) == 1 else "s")
    parts = [f"{done} {unit}" + (f" ({stage.failed} failed)" if stage.failed else "")]
    items = f"{stage.items}/{stage.items_total}" if stage.items_total is not None else stage.items
    parts.append(f"{items} {stage.items_label}")
    if stage.retries:
        parts.append(f"{stage.retries} retried")
    if stage.waited_seconds >= 0.1:  # pacing measures every request's few microseconds too
        parts.append(f"waited {duration(stage.waited_seconds)} for the platform")
    return ", ".join(parts)


def timing(stage: StageSnapshot) -> str:
    """Elapsed time, and the ETA while the stage runs and knows its total."""
    if stage.finished:
        return f"done in {duration(stage.elapsed_seconds)}"
    eta = stage.eta_seconds
    return f"{duration(stage.elapsed_seconds)} elapsed" + (
        f", ETA {duration(eta)}" if eta is not None else ""
    )


def progress_line(stage: StageSnapshot) -> str:
    """One plain line (no control characters), for logs and cron mail."""
    return f"progress: {stage.name}: {counts(stage)}; {timing(stage)}"


class PlainLines:
    """Every `every` seconds, one line per stage still running; a last line for each one shown."""

    def __init__(self, progress: Progress, stream: TextIO, every: float) -> None:
        self._progress, self._stream, self._every = progress, stream, every
        self._stop = threading.Event()
        self._shown: set[str] = set()  # stages with a line so far, which get a final line too
        self._ended: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="progress-lines", daemon=True)

    def __enter__(self) -> PlainLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._write(final_only=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._write(final_only=False)

    def _write(self, final_only: bool) -> None:
        lines = []
        for stage in self._progress.snapshot():
            if stage.name in self._ended:
                continue
            if stage.finished or final_only:
                if stage.name in self._shown:
                    lines.append(progress_line(stage))
                    self._ended.add(stage.name)
            elif not final_only:
                lines.append(progress_line(stage))
                self._shown.add(stage.name)
        if lines:
            self._stream.write("".join(line + "\n" for line in lines))
            self._stream.flush()


def live_view(progress: Progress) -> RenderableType:
    """The live display: one row per stage, with a bar where the total is known."""
    table = Table.grid(padding=(0, 1))
    for _ in range(4):
        table.add_column()
    for stage in progress.snapshot():
        total, done = (
            (1, 1) if stage.finished and stage.total is None else (stage.total, stage.done)
        )
        bar = ProgressBar(
            total=total,
            completed=done,
            width=24,
            pulse=total is None,
            # explicit colours: Prefect's console theme has none of rich's default styles
            style="grey37",
            complete_style="cyan",
            finished_style="green",
            pulse_style="cyan",
        )
        table.add_row(
            Text(stage.name, style="bold"), bar, Text(counts(stage)), Text(timing(stage), "dim")
        )
    return Group(table)


def prefect_console() -> Console:
    """The console Prefect logs to, so that its log lines print above the live display."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            return handler.console
    return Console(file=sys.stderr)


@contextmanager
def showing_progress(every: float) -> Iterator[None]:
    """Show the run's long stages on stderr: live in a terminal, else a line every `every` s.

    `every` = 0: no lines (a terminal still gets the live display).
    """
    progress = current()
    progress.clear()
    console = prefect_console()
    if console.is_terminal:
        with Live(
            get_renderable=lambda: live_view(progress),
            console=console,
            refresh_per_second=LIVE_REFRESHES_PER_SECOND,
            redirect_stdout=False,
        ):
            yield
    elif every > 0:
        with PlainLines(progress, sys.stderr, every):
            yield
    else:
        yield
