"""A new kind of warehouse is one module and one registry line: a toy kind syncs through the flow."""

from __future__ import annotations

import pytest
import toy_source
from builders import csv_warehouse, pid, product

from flows.sync import inventory_sync
from tasks.config.errors import ConfigError
from tasks.config.settings import load_settings
from tasks.sources import registry

pytestmark = pytest.mark.fast

TOY_WAREHOUSE = """
[[warehouses]]
name = "toys"
kind = "toy"
stock = { A = 3, B = 4 }
sku_column = "sku"
quantity_column = "qty"
safety_stock = 1
"""


@pytest.fixture
def kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kinds a test registers are gone after it."""
    monkeypatch.setattr(registry, "KINDS", dict(registry.KINDS))


@pytest.mark.usefixtures("kinds", "prefect_api", "token_env")
def test_a_toy_kind_registered_in_one_line_syncs_beside_a_csv_warehouse(
    tmp_path, sandbox, write_config
):
    registry.register(toy_source.KIND)

    sandbox.reset(products=[product("A"), product("B"), product("C", quantity=7)])
    (tmp_path / "east.csv").write_text("sku,qty\nA,10\n")
    config = write_config(TOY_WAREHOUSE + csv_warehouse("east", "east.csv"))
    state = inventory_sync(config_path=str(config), return_state=True)
    summary = state.result(raise_on_failure=False)
    assert state.is_completed(), summary
    assert sandbox.quantities() == {
        pid("A"): (3 - 1) + 10,  # the toy's safety stock applies like any kind's
        pid("B"): 4 - 1,
        pid("C"): 0,  # in no warehouse
    }
    lines = {w.name: (w.source, w.rows, w.skus) for w in summary.warehouses}
    assert lines == {"toys": ("toy://toys", 2, 2), "east": (str(tmp_path / "east.csv"), 1, 1)}


def test_a_kind_nobody_registered_is_refused_naming_the_known_ones(tmp_path):
    path = tmp_path / "sync.toml"
    path.write_text('[lightspeed]\nbase_url = "http://127.0.0.1:9"\n' + TOY_WAREHOUSE)
    with pytest.raises(ConfigError) as refused:
        load_settings(path, environ={})
    assert str(refused.value).endswith(
        '  - warehouses[0] (name = "toys"): kind must be one of csv, parquet, sftp, http, sql'
    )
    assert "toy" not in registry.names()
