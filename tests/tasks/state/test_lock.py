"""The run lock on a state folder: taken by the CLI before Prefect starts, adopted by its run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tasks.state.lock import LOCK_FILE, StateBusy, lock_for_next_run, run_lock
from tasks.state.store import StateStore

pytestmark = pytest.mark.fast
TRY_LOCK = """
import sys
from tasks.state.lock import StateBusy, run_lock
try:
    with run_lock(sys.argv[1], "run from another process"):
        pass
except StateBusy as exc:
    print(exc)
    sys.exit(3)
"""


def other_process_takes(folder) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", TRY_LOCK, str(folder)], capture_output=True, text=True, timeout=60
    )


def test_the_lock_taken_for_the_next_run_is_adopted_by_that_run_only(tmp_path):
    with lock_for_next_run(tmp_path, "an inventory-sync CLI run"):
        assert "an inventory-sync CLI run (pid" in (tmp_path / LOCK_FILE).read_text()
        with StateStore(tmp_path).exclusive("first"):
            assert "run first (pid" in (tmp_path / LOCK_FILE).read_text()
            second = StateStore(tmp_path).exclusive("second")
            with pytest.raises(StateBusy, match="in use by run first"), second:  # handed over once
                pass
        # the run is over, the CLI still holds the lock: no one else slips in
        refused = other_process_takes(tmp_path)
        assert refused.returncode == 3, refused.stderr
        assert "in use by run first (pid" in refused.stdout
        assert "another run of this config is in progress; nothing was done" in refused.stdout
    assert other_process_takes(tmp_path).returncode == 0  # released with the CLI's hold


def test_a_run_without_a_handed_over_lock_takes_it_itself(tmp_path):
    """A deployment run: no CLI in front of it."""
    with StateStore(tmp_path).exclusive("scheduled"):
        assert other_process_takes(tmp_path).returncode == 3
        with pytest.raises(StateBusy), lock_for_next_run(tmp_path, "a CLI run"):
            pass
    with run_lock(tmp_path, "next"):
        pass
