"""The `inventory-sync` command as a user runs it: a real subprocess, its output and exit status."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from builders import csv_warehouse, pid, product
from cli_runs import CLI, cli

from sandbox.server import Fault

pytestmark = pytest.mark.slow
DEV_CLI = [sys.executable, "-m", "devstack.cli"]


@pytest.fixture
def config(tmp_path, sandbox, write_config) -> Path:
    sandbox.reset(products=[product(f"S{i}") for i in range(4)])
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "east.csv").write_text(
        "sku,qty\n" + "".join(f"S{i},{i}\n" for i in range(4))
    )
    return write_config(
        csv_warehouse("east", "feeds/east.csv"), lightspeed="chunk_size = 2\nretries = 1"
    )


@pytest.mark.parametrize(
    ("program", "command"),
    [
        (CLI, []),
        (CLI, ["run"]),
        (DEV_CLI, []),
        (DEV_CLI, ["sandbox"]),
        (DEV_CLI, ["demo"]),
        (DEV_CLI, ["local-stack"]),
    ],
)
def test_help(program, command, tmp_path):
    result = cli(*command, "--help", api=None, cwd=tmp_path, program=program)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_run_help_lists_every_exit_status(tmp_path):
    result = cli("run", "--help", api=None, cwd=tmp_path, COLUMNS="120")
    lines = [line.strip() for line in result.stdout.splitlines()]
    statuses = lines[lines.index("Exit status:") + 1 :][:4]
    assert statuses == [
        "0 every valid update landed.",
        "1 the run failed, or a chunk finally failed (the summary names what did not land).",
        "2 bad configuration or usage.",
        "3 another run of this config is in progress; nothing was done.",
    ]


def test_exit_0_prints_the_summary_and_works_from_any_directory(
    config, sandbox, prefect_api, tmp_path
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("run", "--config", str(config), api=prefect_api, cwd=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Sent 4 of 4 product(s): 2 of 2 chunk(s) accepted" in result.stdout
    assert "Result: OK" in result.stdout
    assert sandbox.quantities() == {pid(f"S{i}"): i for i in range(4)}
    assert "test-token" not in result.stdout + result.stderr


def test_exit_1_when_a_chunk_finally_fails(config, sandbox, prefect_api, tmp_path):
    sandbox.add_fault(Fault(status=503, times=10, if_contains_id=pid("S3")))
    result = cli("run", "--config", str(config), api=prefect_api, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED chunk 2/2 S2…S3 (2 products) after 2 attempt(s)" in result.stdout
    assert "Result: FAILED: 2 product(s) did not land" in result.stdout
    assert sandbox.quantities()[pid("S1")] == 1


def test_exit_1_when_a_warehouse_cannot_be_read(config, sandbox, prefect_api, tmp_path):
    (tmp_path / "feeds" / "east.csv").unlink()
    result = cli("run", "--config", str(config), api=prefect_api, cwd=tmp_path)
    assert result.returncode == 1
    assert "warehouse 'east': no file matches" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert [r for r in sandbox.requests() if r.method == "PUT"] == []


def test_exit_2_for_a_bad_configuration(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[lightspeed]\nbase_url = "http://x"\n[[warehouses]]\nname = "e"\nkind = "csv"\n'
    )
    result = cli("run", "--config", str(bad), api=None, cwd=tmp_path)
    assert result.returncode == 2
    assert 'warehouses[0] (name = "e").path: Field required' in result.stderr
    assert 'warehouses[0] (name = "e").sku_column: Field required' in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_exit_2_without_a_token(config, tmp_path):
    result = cli("run", "--config", str(config), api=None, cwd=tmp_path, token="")
    assert result.returncode == 2
    assert "no API token: set LIGHTSPEED_TOKEN" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_exit_2_for_bad_usage(tmp_path):
    assert cli("run", api=None, cwd=tmp_path).returncode == 2
    assert cli("frobnicate", api=None, cwd=tmp_path).returncode == 2


def test_demo_is_what_make_run_does(tmp_path, prefect_api):
    import shutil

    demo = tmp_path / "demo"
    demo.mkdir()
    shutil.copy(Path(__file__).parents[2] / "demo" / "inventory-sync.toml", demo)
    result = cli(
        "demo", "--dir", str(demo), api=prefect_api, cwd=tmp_path, token="a-real-token",
        program=DEV_CLI,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "Demo check: the sandbox holds the expected quantity for all 28 products." in result.stdout
    )
    assert list((demo / "reports").glob("*-quarantine.csv"))


def test_change_guard_without_a_server_fails_with_the_explanation(tmp_path, sandbox, write_config):
    """No PREFECT_API_URL: nobody could approve in a UI, so the run fails and says why."""
    sandbox.reset(products=[product(f"S{i}", quantity=10) for i in range(5)])
    (tmp_path / "east.csv").write_text("sku,qty\n" + "".join(f"S{i},0\n" for i in range(5)))
    config = write_config(csv_warehouse("east", "east.csv"), guards="max_zeroed_share = 0.2")
    env = {"PREFECT_HOME": str(tmp_path / "prefect-home")}
    result = cli("run", "--config", str(config), api=None, cwd=tmp_path, **env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the change guard tripped and this run has no Prefect server" in result.stderr
    assert "5 of 5" in result.stderr and "--approve-large-changes" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert [r for r in sandbox.requests() if r.method == "PUT"] == []


@pytest.mark.parametrize(
    ("args", "api", "says"),
    [
        ([], None, "PREFECT_API_URL is not set"),
        (
            ["--late-after", "5s"],
            "http://127.0.0.1:9/api",
            "--late-after: Prefect needs at least 10",
        ),
    ],
)
def test_deploy_refuses_bad_usage_before_touching_a_server(tmp_path, args, api, says):
    result = cli("deploy", "--config", str(tmp_path / "sync.toml"), *args, api=api, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr


def test_deploy_says_so_when_the_server_does_not_answer(tmp_path):
    result = cli("deploy", "--config", "sync.toml", api="http://127.0.0.1:9/api", cwd=tmp_path)
    assert result.returncode == 1
    assert "the Prefect server at http://127.0.0.1:9/api does not answer" in result.stderr
