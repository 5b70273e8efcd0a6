"""What `make test` does on a machine without the system packages the suite starts servers from."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "devstack" / "system_packages.sh"
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
FAKE_APT_GET = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/apt-get.log"
"""


@pytest.fixture
def no_chromium() -> Iterator[Path]:
    """A folder for PATH with every command of /usr/bin except Chromium, readable by anyone."""
    folder = Path(tempfile.mkdtemp(prefix="inventory-sync-bin-"))
    try:
        folder.chmod(0o755)
        for command in Path("/usr/bin").iterdir():
            if not command.name.startswith("chromium"):
                (folder / command.name).symlink_to(command)
        yield folder
    finally:
        shutil.rmtree(folder)


def run(argv: list[str], path: Path, as_user: bool) -> subprocess.CompletedProcess[str]:
    """Run with PATH = `path` only; as an unprivileged user when we are root and `as_user`."""
    prefix = AS_NOBODY if as_user and os.geteuid() == 0 else []
    env = {"PATH": str(path), "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    return subprocess.run(
        [*prefix, *argv], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


EXPECTED = (
    "make test needs chromium, not installed here: run `sudo apt-get update && sudo apt-get "
    "install -y --no-install-recommends chromium`, then make test again (make test-fast needs "
    "neither)"
)


def test_without_root_a_missing_package_is_one_line_naming_the_command(no_chromium):
    result = run(["bash", str(SCRIPT)], no_chromium, as_user=True)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [EXPECTED]


def test_make_test_stops_before_building_or_running_anything(no_chromium):
    stamp = ROOT / ".venv" / ".installed"
    before = stamp.stat().st_mtime_ns if stamp.exists() else None
    result = run(["make", "--no-print-directory", "test"], no_chromium, as_user=True)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if not line.startswith("make: ***")]
    assert ours == [EXPECTED]
    assert "pytest" not in result.stdout + result.stderr
    assert "pip install" not in result.stdout
    assert (stamp.stat().st_mtime_ns if stamp.exists() else None) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="installing is what root does")
def test_as_root_the_missing_package_is_installed_with_apt_get(no_chromium):
    (no_chromium / "apt-get").unlink()
    (no_chromium / "apt-get").write_text(FAKE_APT_GET)
    (no_chromium / "apt-get").chmod(0o755)
    result = run(["bash", str(SCRIPT)], no_chromium, as_user=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "installing system packages: chromium\n"
    assert (no_chromium / "apt-get.log").read_text().splitlines() == [
        "update -qq",
        "install -y -qq --no-install-recommends chromium",
    ]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs the packages installed")
def test_with_everything_installed_it_says_nothing_and_lets_make_go_on():
    result = run(["bash", str(SCRIPT)], Path("/usr/bin"), as_user=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
