"""The state store on both backends: the same semantics on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import fcntl
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from flows.cli.app import app
from tasks.config.errors import ConfigError
from tasks.config.secrets import resolve_state
from tasks.config.settings import load_settings
from tasks.state.frames import to_blob
from tasks.state.legacy import is_legacy, snapshot_file_name
from tasks.state.location import StateLocation
from tasks.state.lock import StateBusy
from tasks.state.migrate import copy_tenant
from tasks.state.store import StateStore

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


pytestmark = pytest.mark.fast


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def database(request, tmp_path) -> str:
    """A fresh state database URL: a SQLite file, or a new database on the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'state.sqlite3'}"
    postgres = request.getfixturevalue("postgres")
    return str(postgres.create_database(f"state_{uuid.uuid4().hex[:12]}"))


def frame(ids: list[str], quantities: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"id": ids, "quantity": quantities})


def test_every_kind_of_state_round_trips_and_tenants_stay_apart(database):
    acme, globex = StateStore(database, "acme"), StateStore(database, "globex")
    acme.commit(frame(["a", "b", "c"], [1, 2, 3]), "run-1")
    acme.commit(frame(["b", "b"], [5, 6]), "run-2")  # a product twice: the last one wins
    globex.commit(frame(["a"], [100]), "run-9")
    acme.forget(["c"])
    assert dict(acme.last_pushed().iter_rows()) == {"a": 1, "b": 6}
    assert dict(globex.last_pushed().iter_rows()) == {"a": 100}
    assert acme.landed_in_run(["a", "b", "z"], "run-1") == {"a", "b"}
    assert acme.fold_pushed() == 3 and acme.landed_in_run(["a"], "run-1") == set()
    assert dict(acme.last_pushed().iter_rows()) == {"a": 1, "b": 6}
    assert globex.landed_in_run(["a"], "run-1") == set()

    rows = pl.DataFrame({"sku_text": ["S1", "S2"], "quantity_text": ["4", "x"]})
    acme.record_good_feed("east", NOW, "east.csv", rows, "run-2", first_line=2)
    assert acme.feed_marks()["east"].modified_at == NOW
    assert acme.last_good_rows("east").equals(rows)
    assert acme.last_good_first_line("east") == 2
    assert globex.feed_marks() == {} and globex.last_good_rows("east") is None

    catalog = pl.DataFrame({"id": ["a", "b"], "vendorSku": ["S1", "S2"]})
    acme.start_refresh("http://x/products?page=1", 250, NOW)
    acme.save_refresh_page(1, catalog.head(1), "http://x/products?page=2")
    assert acme.refresh_progress().next_url == "http://x/products?page=2"
    assert globex.refresh_progress() is None
    acme.save_refresh_page(2, catalog.tail(1), None)
    assert pl.concat(acme.refresh_pages()).equals(catalog)
    acme.finish_refresh(catalog, 2, 250, NOW)
    kept = acme.kept_catalog()
    assert kept is not None and kept.frame.equals(catalog) and kept.refreshed_at == NOW
    assert acme.refresh_progress() is None and globex.kept_catalog() is None

    acme.record_audit({1: 250, 2: 100}, 3, NOW)
    assert acme.read_back_start() == 3 and globex.read_back_start() == 1
    assert acme.audited_since(NOW - timedelta(hours=1)) == 350
    assert globex.audited_since(NOW - timedelta(hours=1)) == 0


def test_many_ids_at_once_stay_under_the_databases_parameter_limits(database):
    store = StateStore(database, "acme")
    ids = [str(uuid.uuid4()) for _ in range(70_000)]
    store.commit(frame(ids, list(range(len(ids)))), "big")
    assert len(store.landed_in_run(ids, "big")) == len(ids)
    store.forget(ids[:40_000])
    assert store.last_pushed().height == 30_000


def test_a_small_log_stays_unfolded_and_a_forget_is_kept_on_both_backends(database):
    store = StateStore(database, "acme")
    store.commit(frame([f"p{i}" for i in range(10)], list(range(10))), "full")
    assert store.fold_pushed(unless_below=0.2) == 1
    store.commit(frame(["p1"], [-100]), "cycle")
    assert store.fold_pushed(unless_below=0.2) == 0  # 1 product of 10: read through the log
    store.forget(["p2", "p9"])
    expected = {f"p{i}": i for i in range(10) if i not in (2, 9)} | {"p1": -100}
    assert dict(StateStore(database, "acme").last_pushed().iter_rows()) == expected
    assert store.landed_in_run(["p1", "p2"], "cycle") == {"p1"}
    assert store.fold_pushed(unless_below=0.2) == 2  # 3 of 10: folded
    assert dict(store.last_pushed().iter_rows()) == expected


def test_migrate_copies_a_snapshot_and_an_unfolded_log_with_its_forgets(tmp_path, postgres):
    source = StateStore(f"sqlite:///{tmp_path / 'state.sqlite3'}", "acme")
    source.commit(frame(["a", "b", "c", "d", "e"], [1, 2, 3, 4, 5]), "run-1")
    source.fold_pushed()
    source.commit(frame(["b"], [20]), "run-2")
    source.forget(["c"])
    assert source.fold_pushed(unless_below=0.5) == 0
    target = StateStore(postgres.create_database(f"state_{uuid.uuid4().hex[:12]}"), "globex")
    copied = copy_tenant(source, target)
    assert copied.rows["pushed_log"] == 2 and copied.rows["pushed_snapshot"] == 1
    assert dict(target.last_pushed().iter_rows()) == {"a": 1, "b": 20, "d": 4, "e": 5}
    assert target.landed_in_run(["a", "b", "c"], "run-2") == {"b"}
    assert target.fold_pushed(unless_below=0.5) == 0, "the snapshot's size came along"
    assert target.fold_pushed() == 2
    assert dict(target.last_pushed().iter_rows()) == {"a": 1, "b": 20, "d": 4, "e": 5}


def test_a_second_run_of_a_tenant_is_refused_but_other_tenants_run(database):
    with StateStore(database, "acme").exclusive("first"):
        busy = r"is in use by run first \(pid \d+"
        with pytest.raises(StateBusy, match=busy), StateStore(database, "acme").exclusive("2nd"):
            pass
        with StateStore(database, "globex").exclusive("other"):
            pass
    with StateStore(database, "acme").exclusive("third"):  # released when the run ended
        pass


HOLD = """
import sys, time
from tasks.state.store import StateStore
with StateStore(sys.argv[1], "acme").exclusive("doomed"):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_a_killed_run_leaves_no_lock_behind(database):
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, database], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout.readline().strip() == "holding"
            blocked = StateStore(database, "acme").exclusive("blocked")
            with pytest.raises(StateBusy, match="in use by run doomed"), blocked:
                pass
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            deadline = time.monotonic() + 10
            while True:  # the server notices the closed session at once; allow it a moment
                try:
                    with StateStore(database, "acme").exclusive("after"):
                        break
                except StateBusy:
                    assert time.monotonic() < deadline, "the killed run's lock outlived it"
                    time.sleep(0.05)
        finally:
            holder.kill()
            holder.wait(10)


def test_a_run_that_lost_its_lock_stops_writing(postgres):
    url = postgres.create_database(f"state_{uuid.uuid4().hex[:12]}")
    store = StateStore(url, "acme")
    with store.exclusive("run-1"):
        store.commit(frame(["a"], [1]), "run-1")
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        advisory = "FROM pg_locks WHERE locktype = 'advisory' AND granted"
        with engine.connect() as admin:  # a database restart, as the lock's session sees it
            admin.execute(sa.text(f"SELECT pg_terminate_backend(pid) {advisory}"))
            deadline = time.monotonic() + 10
            while admin.execute(sa.text(f"SELECT count(*) {advisory}")).scalar():
                assert time.monotonic() < deadline, "the session did not end"
                admin.rollback()
                time.sleep(0.05)
        engine.dispose()
        with pytest.raises(StateBusy, match="lost its run lock"):
            store.commit(frame(["b"], [2]), "run-1")
    assert dict(store.last_pushed().iter_rows()) == {"a": 1}


# The schema of the single-tenant version: one folder per configuration, Parquet snapshots.
LEGACY_SCHEMA = """
CREATE TABLE pushed (product_id TEXT PRIMARY KEY, quantity INTEGER NOT NULL,
    pushed_at TEXT NOT NULL, run TEXT NOT NULL);
CREATE TABLE feeds (warehouse TEXT PRIMARY KEY, modified_at TEXT NOT NULL, source TEXT NOT NULL,
    run TEXT NOT NULL, recorded_at TEXT NOT NULL);
CREATE TABLE catalog (one INTEGER PRIMARY KEY CHECK (one = 1), refreshed_at TEXT NOT NULL,
    products INTEGER NOT NULL, pages INTEGER NOT NULL, per_page INTEGER NOT NULL,
    frame BLOB NOT NULL);
CREATE TABLE catalog_refresh (one INTEGER PRIMARY KEY CHECK (one = 1), started_at TEXT NOT NULL,
    per_page INTEGER NOT NULL, next_url TEXT, pages INTEGER NOT NULL);
CREATE TABLE catalog_refresh_pages (page INTEGER PRIMARY KEY, frame BLOB NOT NULL);
CREATE TABLE audited_pages (page INTEGER PRIMARY KEY, audited_at TEXT NOT NULL,
    products INTEGER NOT NULL);
CREATE TABLE marks (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
LEGACY_ROWS = pl.DataFrame({"sku_text": ["S1"], "quantity_text": ["7"], "line": [2]})
LEGACY_TEXTS = LEGACY_ROWS.select("sku_text", "quantity_text")


def legacy_state(folder: Path) -> Path:
    """A state folder as the single-tenant version left it: 2 pushed products, one good feed."""
    folder.mkdir(parents=True)
    with sqlite3.connect(folder / "state.sqlite3") as db:
        db.executescript(LEGACY_SCHEMA)
        db.executemany(
            "INSERT INTO pushed VALUES (?, ?, ?, 'old-run')",
            [("a", 1, NOW.isoformat()), ("b", 2, NOW.isoformat())],
        )
        db.execute(
            "INSERT INTO feeds VALUES ('east', ?, 'east.csv', 'old-run', ?)",
            (NOW.isoformat(), NOW.isoformat()),
        )
        db.execute("INSERT INTO marks VALUES ('read_back_next_page', '4')")
    (folder / "snapshots").mkdir()
    LEGACY_ROWS.write_parquet(folder / "snapshots" / snapshot_file_name("east"))
    return folder


def test_a_state_from_before_tenants_is_upgraded_where_it_is(tmp_path):
    folder = legacy_state(tmp_path / "state")
    store = StateStore(folder)  # the default tenant, as a config without state.tenant has
    assert dict(store.last_pushed().iter_rows()) == {"a": 1, "b": 2}
    assert store.feed_marks()["east"].run == "old-run"
    assert store.last_good_rows("east").equals(LEGACY_TEXTS)  # from the Parquet snapshot
    assert store.last_good_first_line("east") == 2
    assert store.read_back_start() == 4
    with sqlite3.connect(folder / "state.sqlite3") as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert not {t for t in tables if t.startswith("legacy_")}


def postgres_config(folder: Path, url: str, tenant: str = "acme") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "acme.toml"
    path.write_text(
        textwrap.dedent(f"""
            [lightspeed]
            base_url = "https://api.example.test"

            [[warehouses]]
            name = "east"
            kind = "csv"
            path = "east.csv"
            sku_column = "sku"
            quantity_column = "qty"

            [state]
            url = "{url}"
            tenant = "{tenant}"
            password = {{ env = "STATE_DB_PASSWORD" }}
        """)
    )
    return path


def test_migrate_state_copies_a_machines_sqlite_state_into_postgresql(
    tmp_path, postgres, monkeypatch
):
    folder = legacy_state(tmp_path / "old" / "state")
    url = postgres.create_database(f"state_{uuid.uuid4().hex[:12]}")
    config = postgres_config(tmp_path / "new", url)
    monkeypatch.setenv("STATE_DB_PASSWORD", "not-needed-with-trust-auth")
    runner = CliRunner()

    result = runner.invoke(app, ["migrate-state", "--config", str(config), "--from", str(folder)])
    assert result.exit_code == 0, result.output
    assert "rows: feed_rows 1, feeds 1, marks 1, pushed_snapshot 1" in result.output
    assert "not-needed" not in result.output  # the password is never printed
    target = StateStore(resolve_state(load_settings(config).state))
    assert dict(target.last_pushed().iter_rows()) == {"a": 1, "b": 2}
    assert target.last_good_rows("east").equals(LEGACY_TEXTS)
    assert target.read_back_start() == 4
    source = sa.create_engine(f"sqlite:///{folder / 'state.sqlite3'}")
    with source.connect() as db:  # the source is left as it was
        assert is_legacy(db)
        assert db.exec_driver_sql("SELECT count(*) FROM pushed").scalar() == 2
    source.dispose()

    again = runner.invoke(app, ["migrate-state", "--config", str(config), "--from", str(folder)])
    assert again.exit_code == 1 and "already holds state (4 rows)" in again.output
    replaced = runner.invoke(
        app, ["migrate-state", "--config", str(config), "--from", str(folder), "--replace"]
    )
    assert replaced.exit_code == 0, replaced.output
    assert dict(target.last_pushed().iter_rows()) == {"a": 1, "b": 2}


def test_migrate_state_names_the_tenants_a_source_holds(tmp_path, postgres):
    shared = tmp_path / "shared.sqlite3"
    StateStore(f"sqlite:///{shared}", "globex").commit(frame(["a"], [1]), "run-1")
    config = postgres_config(tmp_path / "new", postgres.url())
    result = CliRunner().invoke(
        app,
        ["migrate-state", "-c", str(config), "--from", f"sqlite:///{shared}", "--from-tenant", "x"],
        env={"STATE_DB_PASSWORD": "x"},
    )
    assert result.exit_code == 1
    assert "holds no state for tenant 'x' (tenants there: globex)" in result.output


def test_migrate_state_waits_for_no_run_it_refuses_while_one_holds_the_source(tmp_path, postgres):
    folder = legacy_state(tmp_path / "old" / "state")
    url = postgres.create_database(f"state_{uuid.uuid4().hex[:12]}")
    config = postgres_config(tmp_path / "new", url)
    with open(folder / "run.lock", "a+") as held:  # an older version's run, still going
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = CliRunner().invoke(
            app,
            ["migrate-state", "--config", str(config), "--from", str(folder)],
            env={"STATE_DB_PASSWORD": "x"},
        )
    assert result.exit_code == 3 and "is in use by" in result.output


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ('url = "postgresql://u:hunter2@db/x"\ntenant = "a"', "the URL holds a password"),
        ('url = "postgresql://u@db/x"', 'a shared database needs state.tenant = "<supplier>"'),
        ('url = "mysql://u@db/x"\ntenant = "a"', "state URLs are sqlite:///<file> or postgresql"),
        ('url = "sqlite:///s.db"\ndir = "state"', "set state.url or state.dir, not both"),
        ('url = "sqlite:///s.db"\npassword = { env = "P" }', "state.password is for a PostgreSQL"),
        ('tenant = "Acme Corp"', "tenant 'Acme Corp': use 1-63 lowercase letters"),
    ],
)
def test_bad_state_settings_name_the_key(tmp_path, state, message):
    path = tmp_path / "sync.toml"
    path.write_text(
        '[lightspeed]\nbase_url = "https://x"\n[[warehouses]]\nname = "e"\nkind = "csv"\n'
        'path = "e.csv"\nsku_column = "s"\nquantity_column = "q"\n[state]\n' + state + "\n"
    )
    with pytest.raises(ConfigError, match="state") as error:
        load_settings(path, environ={})
    assert message in str(error.value)
    assert "hunter2" not in str(error.value)


def test_state_settings_resolve_to_a_location_without_the_password_in_it(tmp_path):
    path = tmp_path / "conf" / "sync.toml"
    path.parent.mkdir()
    base = '[lightspeed]\nbase_url = "https://x"\n[[warehouses]]\nname = "e"\nkind = "csv"\n'
    base += 'path = "e.csv"\nsku_column = "s"\nquantity_column = "q"\n'
    path.write_text(base)
    default = resolve_state(load_settings(path, environ={}).state, environ={})
    assert default == StateLocation(f"sqlite:///{tmp_path / 'conf' / 'state' / 'state.sqlite3'}")

    path.write_text(base + '[state]\nurl = "sqlite:///shared/all.sqlite3"\ntenant = "acme"\n')
    relative = resolve_state(load_settings(path, environ={}).state, environ={})
    assert relative.sqlite_path == tmp_path / "conf" / "shared" / "all.sqlite3"

    path.write_text(
        base + '[state]\nurl = "postgresql://sync@db.internal:5433/inventory"\n'
        'tenant = "acme"\npassword = { env = "STATE_DB_PASSWORD" }\n'
    )
    settings = load_settings(path, environ={})
    with pytest.raises(ConfigError, match="state.password: environment variable STATE_DB_PASS"):
        resolve_state(settings.state, environ={})
    shared = resolve_state(settings.state, environ={"STATE_DB_PASSWORD": "hunter2"})
    assert shared.url == "postgresql://sync@db.internal:5433/inventory"
    assert "hunter2" not in f"{shared} {shared!r} {shared.engine_url()!r}"
    assert shared.engine_url().password == "hunter2"


def test_a_state_with_a_snapshot_and_a_log_from_before_tenants_is_upgraded(tmp_path):
    """The version just before tenants kept pushed quantities as a snapshot plus a log."""
    folder = tmp_path / "state"
    folder.mkdir()
    snapshot = pl.DataFrame(
        {"id": ["a", "b"], "quantity": [1, 2], "pushed_at": ["t", "t"], "run": ["r1", "r1"]}
    )
    with sqlite3.connect(folder / "state.sqlite3") as db:
        db.executescript(LEGACY_SCHEMA)
        db.executescript(
            "CREATE TABLE pushed_snapshot (one INTEGER PRIMARY KEY CHECK (one = 1), "
            "folded_at TEXT NOT NULL, frame BLOB NOT NULL);"
            "CREATE TABLE pushed_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL, "
            "at TEXT NOT NULL, forgotten INTEGER NOT NULL, frame BLOB NOT NULL);"
        )
        db.execute("INSERT INTO pushed_snapshot VALUES (1, 't', ?)", (to_blob(snapshot),))
        db.executemany(
            "INSERT INTO pushed_log (run, at, forgotten, frame) VALUES (?, 't', ?, ?)",
            [
                ("r2", 0, to_blob(frame(["b", "c"], [5, 6]))),
                (
                    "",
                    1,
                    to_blob(
                        pl.DataFrame(
                            {"id": ["a"], "quantity": [None]},
                            {"id": pl.String, "quantity": pl.Int64},
                        )
                    ),
                ),
            ],
        )
    store = StateStore(folder)
    assert dict(store.last_pushed().iter_rows()) == {"b": 5, "c": 6}
    assert store.landed_in_run(["b", "c"], "r2") == {"b", "c"}
    assert store.fold_pushed() == 2
    assert dict(store.last_pushed().iter_rows()) == {"b": 5, "c": 6}
