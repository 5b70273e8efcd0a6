"""The product as users install it: a wheel holding flows, tasks and their data, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = {"flows", "tasks", "expectations", "deployments"}
NEVER = {"sandbox", "devstack", "benchmarks", "tests", "demo", "docs"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (found,) = out.glob("inventory_sync-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel; its dependencies come from this environment's site-packages
    by a path entry (not a site dir, so the checkout's editable install is not loaded)."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.create(env_dir, with_pip=False)
    purelib = Path(
        sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)})
    )
    (purelib / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    with zipfile.ZipFile(wheel) as archive:  # what pip would do for a pure wheel
        archive.extractall(purelib)
    python = env_dir / "bin" / "python"
    script = env_dir / "bin" / "inventory-sync"
    script.write_text(f"#!{python}\nfrom flows.cli.app import main\nmain()\n")
    script.chmod(0o755)
    return env_dir


def run_in(env_dir: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environ["COLUMNS"] = "100"
    return subprocess.run(
        [str(env_dir / "bin" / command[0]), *command[1:]],
        cwd=cwd, env=environ, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_the_wheel_holds_the_product_and_its_data_only(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == PRODUCT
    assert not top & NEVER
    assert "expectations/warehouse_rows.json" in names
    assert "expectations/payload.json" in names
    assert "deployments/prefect.yaml" in names
    assert "deployments/automations.yaml" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "inventory-sync = flows.cli.app:main" in scripts
    assert "inventory-sync-dev" not in scripts


def test_the_installed_commands_answer_help_from_outside_the_checkout(installed: Path, tmp_path):
    for command in (("inventory-sync", "--help"), ("inventory-sync", "deploy", "--help")):
        done = run_in(installed, *command, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "Usage" in done.stdout
    deploy_help = run_in(installed, "inventory-sync", "deploy", "--help", cwd=tmp_path).stdout
    assert "--configs" in deploy_help


def test_the_installed_package_finds_its_data_in_site_packages(installed: Path, tmp_path):
    probe = (
        "import flows, tasks.checks.gx as gx, flows.server.setup as setup, importlib.util as u\n"
        "print(flows.__file__)\n"
        "print(sorted(gx.load_suite('warehouse_rows')))\n"
        "print(setup.PREFECT_FILE.is_file(), setup.AUTOMATIONS_FILE.is_file())\n"
        "print([m for m in ('sandbox', 'devstack', 'benchmarks') if u.find_spec(m)])\n"
    )
    done = run_in(installed, "python", "-c", probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, suite, files, dev = done.stdout.splitlines()
    assert where.startswith(str(installed))
    assert "expectations" in suite
    assert files == "True True"
    assert dev == "[]"
