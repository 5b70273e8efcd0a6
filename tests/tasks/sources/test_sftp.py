"""SFTP drops against a real SSH server on loopback: logins, host keys, globs, archiving."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
import pytest
from prefect import flow
from pydantic import SecretStr
from sftp_server import KEY_USER, PASSWORD, PASSWORD_USER, SftpServer

from tasks.sources.extract import archive_processed, extract_all
from tasks.sources.feed import WarehouseUnavailable, WarehouseUnreadable
from tasks.sources.sftp import SftpWarehouse, archive_sftp_file, read_sftp_feed

GOOD = {"password": SecretStr(PASSWORD)}


@pytest.fixture(scope="module")
def sftp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    with SftpServer(tmp_path_factory.mktemp("sftp-root")) as server:
        yield server


@pytest.fixture
def outbound(sftp: SftpServer) -> Iterator[Path]:
    """The server's /outbound folder, empty for each test."""
    folder = sftp.root / "outbound"
    folder.mkdir()
    yield folder
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    folder.rmdir()


def warehouse(sftp: SftpServer, **extra: object) -> SftpWarehouse:
    fields: dict[str, object] = {
        "name": "east",
        "kind": "sftp",
        "host": "127.0.0.1",
        "port": sftp.port,
        "user": PASSWORD_USER,
        "password": {"env": "EAST_SFTP_PASSWORD"},
        "host_key": sftp.host_key_line,
        "path": "/outbound/stock-*.csv",
        "sku_column": "sku",
        "quantity_column": "qty",
        "retries": 0,
    }
    return SftpWarehouse.model_validate(fields | extra)


def drop(folder: Path, name: str, text: str, mtime: float | None = None, encoding="utf-8") -> Path:
    path = folder / name
    path.write_bytes(text.encode(encoding))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_reads_the_newest_matching_file_with_the_csv_options(sftp, outbound):
    drop(outbound, "stock-2.csv", "Artikel;Bestand\nOLD;1\n", mtime=1_000_000)
    newest = drop(outbound, "stock-1.csv", "Artikel;Bestand\nSÜSS;4\nB;\n", encoding="cp1252")
    drop(outbound, "other.csv", "Artikel;Bestand\nNOT-MATCHED;9\n")
    wh = warehouse(sftp, sku_column="Artikel", quantity_column="Bestand", delimiter=";")
    feed = read_sftp_feed(wh.model_copy(update={"encoding": "cp1252"}), GOOD)
    assert feed.numbered().select("sku_text", "quantity_text", "line").rows() == [
        ("SÜSS", "4", 2),
        ("B", None, 3),
    ]
    assert feed.source == f"sftp://alice@127.0.0.1:{sftp.port}/outbound/stock-1.csv"
    assert feed.bytes_read == newest.stat().st_size
    assert feed.modified_at == datetime.fromtimestamp(int(newest.stat().st_mtime), tz=UTC)


def test_private_key_login_with_a_passphrase(sftp, outbound, tmp_path):
    drop(outbound, "stock-1.csv", "sku,qty\nA,1\n")
    wh = warehouse(
        sftp,
        user=KEY_USER,
        password=None,
        private_key={"secret": "east-key"},
        passphrase={"env": "EAST_KEY_PASSPHRASE"},
        host_key=None,
        known_hosts=str(sftp.known_hosts(tmp_path / "known_hosts")),
    )
    secrets = {
        "private_key": SecretStr(sftp.client_key_text(passphrase="pass phrase")),
        "passphrase": SecretStr("pass phrase"),
    }
    assert read_sftp_feed(wh, secrets).rows["sku_text"].to_list() == ["A"]
    with pytest.raises(WarehouseUnreadable, match="private_key cannot be read .*passphrase"):
        read_sftp_feed(wh, secrets | {"passphrase": SecretStr("wrong")})


def test_wrong_password_names_the_user_and_what_to_check(sftp, outbound):
    drop(outbound, "stock-1.csv", "sku,qty\nA,1\n")
    with pytest.raises(WarehouseUnreadable) as info:
        read_sftp_feed(warehouse(sftp), {"password": SecretStr("not-it")})
    message = str(info.value)
    assert message.startswith("warehouse 'east': ")
    assert "login as 'alice' refused; check the password" in message
    assert "not-it" not in message and PASSWORD not in message


@pytest.mark.parametrize("trust", ["host_key", "known_hosts"])
def test_an_unknown_host_key_stops_before_the_password_is_sent(sftp, outbound, tmp_path, trust):
    drop(outbound, "stock-1.csv", "sku,qty\nA,1\n")
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    if trust == "host_key":
        wh = warehouse(sftp, host_key=impostor)
    else:
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{sftp.port} {impostor}\n")
        wh = warehouse(sftp, host_key=None, known_hosts=str(known))
    sftp.passwords_seen.clear()
    with pytest.raises(WarehouseUnreadable) as info:
        read_sftp_feed(wh, GOOD)
    message = str(info.value)
    fingerprint = sftp.host_key.get_fingerprint()
    assert f"host key not trusted: the server presented ssh-ed25519 key {fingerprint}" in message
    assert f"not the key in {trust}" in message
    assert sftp.passwords_seen == []  # the password never went to a server we could not verify


def test_missing_remote_file_names_the_glob(sftp, outbound):
    drop(outbound, "other.csv", "sku,qty\nA,1\n")
    with pytest.raises(
        WarehouseUnreadable, match=r"no remote file matches sftp://.*/stock-\*\.csv"
    ):
        read_sftp_feed(warehouse(sftp), GOOD)
    with pytest.raises(WarehouseUnreadable, match="no remote file matches"):
        read_sftp_feed(warehouse(sftp, path="/no-such-folder/*.csv"), GOOD)


def test_a_bad_csv_names_the_remote_file(sftp, outbound):
    drop(outbound, "stock-1.csv", "sku,amount\nA,1\n")
    with pytest.raises(WarehouseUnreadable, match=r"sftp://.*/stock-1\.csv: missing column"):
        read_sftp_feed(warehouse(sftp), GOOD)


def test_a_server_that_is_down_is_worth_a_retry(sftp):
    with pytest.raises(WarehouseUnavailable, match="cannot connect"):
        read_sftp_feed(warehouse(sftp, port=1), GOOD)


def test_archive_moves_exactly_the_file_that_was_read(sftp, outbound):
    drop(outbound, "stock-1.csv", "sku,qty\nA,1\n")
    wh = warehouse(sftp, archive_dir="/outbound/archive")
    feed = read_sftp_feed(wh, GOOD)
    assert archive_sftp_file(wh, GOOD, feed) == "/outbound/archive/stock-1.csv"
    assert not (outbound / "stock-1.csv").exists()
    # the same name again (a provider that reuses it): archived beside the first, not over it
    drop(outbound, "stock-1.csv", "sku,qty\nA,2\n")
    feed = read_sftp_feed(wh, GOOD)
    target = archive_sftp_file(wh, GOOD, feed)
    assert target.startswith("/outbound/archive/stock-1-") and target.endswith("Z.csv")
    assert sorted(p.read_text() for p in (outbound / "archive").iterdir()) == [
        "sku,qty\nA,1\n",
        "sku,qty\nA,2\n",
    ]


def test_archive_leaves_a_file_that_changed_after_it_was_read(sftp, outbound):
    path = drop(outbound, "stock-1.csv", "sku,qty\nA,1\n")
    wh = warehouse(sftp, archive_dir="/outbound/archive")
    feed = read_sftp_feed(wh, GOOD)
    drop(outbound, "stock-1.csv", "sku,qty\nA,1\nB,7\n")  # the provider rewrote it meanwhile
    with pytest.raises(WarehouseUnreadable, match="changed after it was read; left in place"):
        archive_sftp_file(wh, GOOD, feed)
    assert path.read_text() == "sku,qty\nA,1\nB,7\n"


@flow
def read_then_archive(warehouses: list) -> list[str]:
    """What the sync flow does around a run that landed: extract first, archive at the end."""
    return archive_processed(extract_all(warehouses), warehouses)


@pytest.mark.usefixtures("prefect_api")
def test_after_a_run_only_warehouses_with_an_archive_dir_move_their_file(
    sftp, outbound, monkeypatch
):
    monkeypatch.setenv("EAST_SFTP_PASSWORD", PASSWORD)
    drop(outbound, "stock-1.csv", "sku,qty\nA,1\n")
    drop(outbound, "west-1.csv", "sku,qty\nW,1\n")
    east = warehouse(sftp, archive_dir="/outbound/archive")
    west = warehouse(sftp, name="west", path="/outbound/west-*.csv")
    assert read_then_archive([east, west]) == ["/outbound/archive/stock-1.csv"]
    assert sorted(p.name for p in outbound.rglob("*.csv")) == ["stock-1.csv", "west-1.csv"]
    assert (outbound / "archive" / "stock-1.csv").exists()
