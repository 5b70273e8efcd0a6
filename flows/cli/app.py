"""The `inventory-sync` command: its subcommands, one module each, and the process's exit."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from contextlib import suppress
from typing import NoReturn

import typer

from flows.cli import auth, deploy, migrate_state, run, watch
from flows.cli.exits import EXIT_FAILED, EXIT_OK

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Keep available quantities on Lightspeed's B2B marketplace true to your warehouses.",
)


@app.callback()
def main_options() -> None:
    """Keep available quantities on Lightspeed's B2B marketplace true to your warehouses."""


app.command("run")(run.run)
app.command("deploy")(deploy.deploy)
app.command("watch")(watch.watch)
app.command("migrate-state")(migrate_state.migrate_state)
app.command("auth")(auth.auth)


def main() -> None:
    """The console script: the command, then an exit without the interpreter's teardown."""
    try:
        app()
        status: object = EXIT_OK
    except SystemExit as exc:
        status = exc.code
    exit_now(status)


def exit_now(status: object) -> NoReturn:
    """Exit as Python would, minus freeing every object one by one, slow after a large run.

    What a normal exit does that matters happens first, in the same order: other non-daemon
    threads are waited for, then the atexit handlers run (Prefect sends its last logs and
    events, logging flushes its files, the validation side process is stopped), then the
    standard streams are flushed. Only the teardown of modules and objects is skipped.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    if isinstance(status, str):  # sys.exit("message"): the message on stderr, status 1
        print(status, file=sys.stderr)
        status = EXIT_FAILED
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # closed by the reader (a pipe to head, say)
            stream.flush()
    os._exit(status if isinstance(status, int) else EXIT_OK if status is None else EXIT_FAILED)
