"""A folder of supplier configurations: what deploying it would register, and what it refuses."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from flows.server.suppliers import deployments_for, read_suppliers, staggered
from tasks.config.errors import ConfigError

pytestmark = pytest.mark.fast


def supplier(folder: Path, name: str, state: str = "", lightspeed: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(
        textwrap.dedent(f"""
            [lightspeed]
            base_url = "https://api.example.test"
            token_secret = "lightspeed-token-{name}"
            {lightspeed}

            [[warehouses]]
            name = "east"
            kind = "csv"
            path = "feeds/{name}.csv"
            sku_column = "sku"
            quantity_column = "qty"

            [state]
            url = "postgresql://sync@db.internal/inventory"
            {state or f'tenant = "{name}"'}
        """)
    )
    return path


def test_each_supplier_gets_the_templates_deployments_with_its_own_parameters_and_tags(tmp_path):
    folder = tmp_path / "suppliers"
    supplier(folder, "acme", lightspeed="account_limit = 4")
    supplier(folder, "globex", lightspeed='account = "northwind"\naccount_limit = 2')
    found = read_suppliers(folder)
    assert [(s.tenant, s.account, s.account_limit) for s in found] == [
        ("acme", "acme", 4),
        ("globex", "northwind", 2),
    ]
    document = deployments_for(found, timezone="Europe/Amsterdam")
    by_name = {d["name"]: d for d in document["deployments"]}
    assert sorted(by_name) == [
        "acme-every-15-minutes",
        "acme-nightly-full",
        "acme-on-feed-arrival",
        "globex-every-15-minutes",
        "globex-nightly-full",
        "globex-on-feed-arrival",
    ]
    (trigger,) = by_name["globex-on-feed-arrival"]["triggers"]
    assert trigger["match"]["inventory-sync.config"] == str(folder / "globex.toml")
    assert trigger["parameters"] == {"warehouses": "{{ event.payload.warehouses }}"}
    nightly = by_name["globex-nightly-full"]
    assert nightly["parameters"] == {"config_path": str(folder / "globex.toml"), "full": True}
    assert {"supplier:globex", "account:northwind", "inventory-sync", "full"} <= set(
        nightly["tags"]
    )
    assert nightly["schedules"][0]["timezone"] == "Europe/Amsterdam"
    assert nightly["schedules"][0]["cron"] == "5 2 * * *"  # a fixed time stays as it is
    assert nightly["concurrency_limit"] == 1 and nightly["work_pool"]["name"] == "inventory-sync"
    every = by_name["acme-every-15-minutes"]["schedules"][0]["cron"]
    assert every == staggered("*/15 * * * *", "acme") and every.endswith("-59/15 * * * *")

    moved = deployments_for(found, worker_folder=Path("/etc/inventory-sync/suppliers"))
    paths = {d["parameters"]["config_path"] for d in moved["deployments"]}
    assert paths == {f"/etc/inventory-sync/suppliers/{n}.toml" for n in ("acme", "globex")}


def test_staggered_schedules_spread_suppliers_over_the_quarter_hour():
    minutes = {staggered("*/15 * * * *", f"supplier-{i}") for i in range(50)}
    assert len(minutes) >= 12  # fifty suppliers land on most of the 15 minutes, not on :00
    assert staggered("*/15 * * * *", "acme") == staggered("*/15 * * * *", "acme")  # stable
    assert staggered("0 * * * *", "acme") == "0 * * * *"


def test_two_files_with_one_tenant_or_one_account_with_two_limits_are_refused(tmp_path):
    folder = tmp_path / "suppliers"
    supplier(folder, "acme", lightspeed='account = "shared"\naccount_limit = 4')
    supplier(folder, "acme-copy", state='tenant = "acme"')
    supplier(folder, "globex", lightspeed='account = "shared"\naccount_limit = 8')
    with pytest.raises(ConfigError) as refused:
        read_suppliers(folder)
    message = str(refused.value)
    assert "acme-copy.toml and acme.toml both keep tenant 'acme'" in message
    assert "account 'shared': its configurations disagree on lightspeed.account_limit (4, 8)" in (
        message
    )


def test_every_invalid_file_is_named_at_once(tmp_path):
    folder = tmp_path / "suppliers"
    supplier(folder, "acme")
    supplier(folder, "bad", lightspeed="chunk_size = 0")
    supplier(folder, "worse", state="# no tenant, in a shared database")
    with pytest.raises(ConfigError) as refused:
        read_suppliers(folder)
    message = str(refused.value)
    assert message.startswith("2 of 3 configuration(s) are invalid")
    assert "bad.toml" in message and "lightspeed.chunk_size" in message
    assert "worse.toml" in message and "needs state.tenant" in message
    with pytest.raises(ConfigError, match="no supplier configuration"):
        read_suppliers(tmp_path / "empty")


ROOT = Path(__file__).resolve().parents[3]
IN_IMAGE = Path("/etc/inventory-sync/suppliers")


@pytest.mark.parametrize(
    ("template", "pool"),
    [
        ("docker/prefect.yaml", "inventory-sync-docker"),
        ("kubernetes/prefect.yaml", "inventory-sync-k8s"),
    ],
)
def test_the_example_folder_deploys_on_the_container_pools(template, pool):
    found = read_suppliers(ROOT / "deployments" / "suppliers")
    assert {(s.tenant, s.account, s.account_limit) for s in found} == {
        ("acme", "acme", 4),
        ("globex-eu", "globex", 6),
    }
    assert {s.database for s in found} == {
        "postgresql://inventory_sync@db.internal:5432/inventory_sync"
    }
    document = deployments_for(found, ROOT / "deployments" / template, "UTC", IN_IMAGE)
    workdir = re.search(r"^WORKDIR (\S+)\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert workdir is not None
    pulled = {"prefect.deployments.steps.set_working_directory": {"directory": workdir[1]}}
    assert document["pull"] == [pulled]  # the runs start where the image keeps the code
    for deployment in document["deployments"]:
        assert deployment["work_pool"]["name"] == pool
        assert deployment["work_pool"]["job_variables"]["image"] == "{{ $INVENTORY_SYNC_IMAGE }}"
        assert Path(deployment["parameters"]["config_path"]).parent == IN_IMAGE
        assert deployment["entrypoint"] == "flows/sync.py:inventory_sync"


def test_the_image_runs_as_a_user_and_installs_only_the_lock():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim", dockerfile, re.M)
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    assert "pip install --require-hashes --no-deps -r requirements.lock" in dockerfile
    assert "prune_to_runtime.py" in dockerfile
