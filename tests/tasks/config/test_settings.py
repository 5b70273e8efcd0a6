"""The configuration file: defaults, relative paths, and errors that name the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tasks.config.errors import ConfigError
from tasks.config.paths import state_folder
from tasks.config.secrets import resolve_token
from tasks.config.settings import load_settings

pytestmark = pytest.mark.fast

GOOD = """
    [lightspeed]
    base_url = "https://api.example.test/"

    [[warehouses]]
    name = "east"
    kind = "csv"
    path = "feeds/east-*.csv"
    sku_column = "sku"
    quantity_column = "qty"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "sync.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_and_paths_relative_to_the_config_file(tmp_path):
    settings = load_settings(write(tmp_path, GOOD), environ={})
    assert settings.lightspeed.base_url == "https://api.example.test"
    lightspeed = settings.lightspeed
    assert (lightspeed.request_size, lightspeed.chunk_size, lightspeed.max_concurrency) == (
        500,
        None,
        4,
    )
    assert settings.catalog.source == "api" and settings.catalog.absent == "zero"
    wh = settings.warehouses[0]
    assert wh.path == str(tmp_path / "conf" / "feeds/east-*.csv")
    assert (wh.safety_stock, wh.delimiter, wh.encoding) == (0, ",", "utf-8")
    assert settings.report.dir == str(tmp_path / "conf" / "reports")


@pytest.mark.parametrize(
    "state",
    ["", '[state]\ndir = "var/state"', '[state]\ndir = "/srv/sync-state"', '[state]\ndir = "~/s"'],
)
def test_the_state_folder_read_from_the_toml_alone_is_the_validated_one(tmp_path, state):
    """The CLI locks this folder before it validates the file: it must be the run's folder."""
    config = write(tmp_path, GOOD + "\n" + state + "\n")
    assert state_folder(config) == Path(load_settings(config, environ={}).state.dir)


def test_no_state_folder_from_a_file_that_is_not_toml(tmp_path):
    assert state_folder(write(tmp_path, "[lightspeed\n")) is None
    assert state_folder(tmp_path / "missing.toml") is None
    assert state_folder(write(tmp_path, "state = 3\n")) is None


def test_base_url_from_the_environment_wins(tmp_path):
    settings = load_settings(
        write(tmp_path, GOOD), environ={"LIGHTSPEED_BASE_URL": "http://127.0.0.1:9"}
    )
    assert settings.lightspeed.base_url == "http://127.0.0.1:9"


def test_token_url_from_the_environment_wins_for_oauth_only(tmp_path):
    oauth = GOOD.replace(
        'base_url = "https://api.example.test/"\n',
        'base_url = "https://api.example.test/"\n'
        "    [lightspeed.auth]\n"
        '    kind = "oauth"\n'
        '    client_id = "c"\n'
        '    client_secret = { env = "S" }\n'
        '    encryption_key = { env = "K" }\n',
    )
    environ = {"LIGHTSPEED_TOKEN_URL": "http://127.0.0.1:9/oauth/token"}
    settings = load_settings(write(tmp_path, oauth), environ=environ)
    assert settings.lightspeed.auth.kind == "oauth"
    assert settings.lightspeed.auth.token_url == "http://127.0.0.1:9/oauth/token"
    assert load_settings(write(tmp_path, GOOD), environ=environ).lightspeed.auth.kind == "static"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace('sku_column = "sku"\n', ""),
            r'warehouses\[0\] \(name = "east"\)\.sku_column: Field required',
        ),
        (
            lambda t: t.replace('kind = "csv"', 'kind = "ftp"'),
            r"warehouses\[0\].*kind must be one of csv, parquet",
        ),
        (lambda t: t + "\n    chunksize = 3\n", r"warehouses\[0\].*chunksize: unknown key"),
        (
            lambda t: t.replace("[lightspeed]", "[lightspeed]\n    chunk_size = 0"),
            r"lightspeed\.chunk_size: Input should be greater than or equal to 1",
        ),
        (
            lambda t: t.replace('base_url = "https://api.example.test/"', 'base_url = "ftp://x"'),
            r"lightspeed\.base_url: .*http",
        ),
        (
            lambda t: t.replace('"https://api.example.test/"', '"https://x"\n    tokn = "x"'),
            r"lightspeed\.tokn: unknown key",
        ),
        (lambda t: t + '\n    encoding = "klingon"\n', r"encoding: .*unknown encoding 'klingon'"),
        (
            lambda t: t + '\n    [catalog]\n    source = "file"\n',
            r'catalog: .*source = "file" needs path',
        ),
        (
            lambda t: t + t[t.index("[[warehouses]]") :],
            r"warehouse names must be unique; repeated: east",
        ),
        (lambda t: t.replace("[lightspeed]", "[lightspeed\n"), r"not valid TOML"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, edit(textwrap.dedent(GOOD))), environ={})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_token_from_the_environment_is_secret(tmp_path):
    settings = load_settings(write(tmp_path, GOOD), environ={})
    token = resolve_token(settings.lightspeed, environ={"LIGHTSPEED_TOKEN": "s3cr3t"})
    assert token.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(token) and "s3cr3t" not in str(token)


def test_no_token_says_where_to_put_it(tmp_path):
    settings = load_settings(write(tmp_path, GOOD), environ={})
    with pytest.raises(ConfigError, match="LIGHTSPEED_TOKEN.*token_secret"):
        resolve_token(settings.lightspeed, environ={})


def test_token_from_a_prefect_secret_block(tmp_path, prefect_api):
    from prefect.blocks.system import Secret

    Secret(value="from-block").save("test-lightspeed-token", overwrite=True)
    text = GOOD.replace(
        'base_url = "https://api.example.test/"',
        'base_url = "https://x"\n    token_secret = "test-lightspeed-token"',
    )
    settings = load_settings(write(tmp_path, text), environ={})
    assert resolve_token(settings.lightspeed, environ={}).get_secret_value() == "from-block"
    missing = settings.lightspeed.model_copy(update={"token_secret": "no-such-block"})
    with pytest.raises(ConfigError, match="cannot load Prefect Secret block 'no-such-block'"):
        resolve_token(missing, environ={})


def test_catalog_file_must_have_every_column_and_be_utf8(tmp_path):
    from tasks.lightspeed.catalog import CatalogError, catalog_from_csv

    good = tmp_path / "good.csv"
    good.write_bytes(
        b"\xef\xbb\xbfvendorSku,id,isInventoryTrackingEnabled,isBackorderingEnabled\r\n"
        b"A,a1,[true],\r\nB,b1,false,true\r\nC,c1,,\r\n"
    )
    frame = catalog_from_csv(str(good))
    assert frame.select("id", "tracked", "backorder").rows() == [
        ("a1", True, False),
        ("b1", False, True),
        ("c1", False, False),
    ]
    misspelt = tmp_path / "misspelt.csv"
    misspelt.write_text("vendorSku,id,isInventoryTracking,isBackorderingEnabled\nA,a1,true,false\n")
    with pytest.raises(CatalogError, match="missing column\\(s\\) isInventoryTrackingEnabled"):
        catalog_from_csv(str(misspelt))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(
        "vendorSku,id,isInventoryTrackingEnabled,isBackorderingEnabled\nÜBER,u1,true,false\n".encode(
            "cp1252"
        )
    )
    with pytest.raises(CatalogError, match="line 2 is not valid UTF-8"):
        catalog_from_csv(str(latin))
    bad_flag = tmp_path / "flag.csv"
    bad_flag.write_text(
        "vendorSku,id,isInventoryTrackingEnabled,isBackorderingEnabled\nA,a1,yes,false\n"
    )
    with pytest.raises(
        CatalogError, match="line 2, column isInventoryTrackingEnabled: not a boolean"
    ):
        catalog_from_csv(str(bad_flag))


def test_empty_config_path_says_what_to_set():
    with pytest.raises(ConfigError, match="config_path is empty.*INVENTORY_SYNC_CONFIG"):
        load_settings("", environ={})
