"""The demo behind `make run`: a catalog, four warehouse feeds, one sync, and a check of the result."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl

DEMO_TOKEN = "sandbox-token"
NAMESPACE = uuid.UUID("6f1c2a52-8d1e-4a53-9d43-2f3a0c6b7e10")
COLOURS = ("RED", "BLUE", "GREEN", "BLACK", "WHITE")
SIZES = ("S", "M", "L", "XL")


def product_id(sku: str) -> str:
    return str(uuid.uuid5(NAMESPACE, sku))


def demo_catalog() -> list[dict[str, Any]]:
    """Tees in every colour and size, mugs, an ambiguous SKU, untracked gift cards."""
    products = []
    for n, (colour, size) in enumerate((c, s) for c in COLOURS for s in SIZES):
        sku = f"TEE-{colour}-{size}"
        # the platform's page writes flags as one-element arrays; real payloads use booleans too
        tracked: Any = [True] if n % 2 else True
        products.append(_product(sku, f"Tee {colour.title()} {size}", tracked, n % 5 == 0))
    products += [
        _product("MUG-WHITE", "Mug White", True, False),
        _product("MUG-BLACK", "Mug Black", [True], True),
        _product("POSTER-A2", "Poster A2 (no warehouse lists it)", True, False),
        _product("CAP-BLUE", "Cap Blue", True, False, pid=product_id("CAP-BLUE#1")),
        _product(
            "CAP-BLUE", "Cap Blue (duplicate listing)", True, False, pid=product_id("CAP-BLUE#2")
        ),
        _product("GIFT-25", "Gift card 25", [False], False),
        _product("GIFT-50", "Gift card 50", None, False),
        _product("SÜSS-TEA", "Süß tea tin", True, False),
    ]
    return products


def _product(
    sku: str, name: str, tracked: Any, backorder: bool, pid: str | None = None
) -> dict[str, Any]:
    inventory: dict[str, Any] = {"isBackorderingEnabled": [backorder]}
    if tracked is not None:
        inventory["isInventoryTrackingEnabled"] = tracked
    return {
        "id": pid or product_id(sku),
        "vendorSku": sku,
        "name": name,
        "inventory": inventory,
        "quantity": 7,
    }


def demo_feeds() -> dict[str, list[tuple[str, str]]]:
    """Rows per warehouse as (SKU, quantity text), bad rows included on purpose."""
    tees = [f"TEE-{c}-{s}" for c in COLOURS for s in SIZES]
    east = [(sku, str((i * 7) % 23)) for i, sku in enumerate(tees)]
    east += [(sku, "3") for sku in tees[:8]]  # a second bin for some SKUs
    east += [("TEE-RED-S", "-4"), ("MUG-WHITE", "12"), ("MUG-WHITE", "5.0"), ("CAP-BLUE", "9")]
    east += [("", "5"), ("TEE-PURPLE-M", "4")]  # empty SKU, unknown SKU
    west = [(sku, str((i * 5) % 17)) for i, sku in enumerate(tees) if i % 3]
    west += [("MUG-BLACK", "abc"), ("MUG-BLACK", "6"), ("SÜSS-TEA", " 40 "), ("GIFT-25", "100")]
    north = [(sku, str(10 + i)) for i, sku in enumerate(tees[::4])]
    north += [("MUG-WHITE", "1")]
    south = [(sku, str(i % 6)) for i, sku in enumerate(tees[1::3])]
    south += [("MUG-WHITE", "2"), ("MUG-WHITE", "3"), ("SÜSS-TEA", "8")]  # two locations
    return {"east": east, "west": west, "north": north, "south": south}


SAFETY_STOCK = {"east": 2, "west": 0, "north": 0, "south": 0}
SOUTH_DB_URL_ENV = "DEMO_SOUTH_DB_URL"  # named by demo/inventory-sync.toml
CLIENT_SECRET_ENV = "LIGHTSPEED_CLIENT_SECRET"  # named by demo/inventory-sync.toml too
TOKEN_KEY_ENV = "INVENTORY_SYNC_TOKEN_KEY"
# `make run`: access tokens expire every minute, so whoever watches sees runs refresh them
ACCESS_TOKEN_SECONDS = 60.0
# `make demo`: longer than its one run, which then obtains exactly one access token (the README
# shows the count); the first sign-in has already made one refresh before it
DEMO_ACCESS_TOKEN_SECONDS = 300.0


def sandbox_env(sandbox: Any, folder: Path) -> dict[str, str]:
    """What a sync of the demo configuration needs, as environment variables (never argv).

    The sandbox's URL and token endpoint (its port is chosen at run time), the south database,
    the sandbox's OAuth client secret, and an encryption key for the stored refresh token, new
    for each stack: the demo's state starts empty every time.
    """
    from cryptography.fernet import Fernet

    from sandbox.oauth import DEFAULT_CLIENT_SECRET, TOKEN_PATH

    return {
        "LIGHTSPEED_BASE_URL": sandbox.url,
        "LIGHTSPEED_TOKEN_URL": f"{sandbox.url}{TOKEN_PATH}",
        SOUTH_DB_URL_ENV: f"sqlite:///{folder / 'feeds' / 'south.sqlite'}",
        CLIENT_SECRET_ENV: DEFAULT_CLIENT_SECRET,
        TOKEN_KEY_ENV: Fernet.generate_key().decode(),
    }


def sign_in(config: Path, sandbox: Any, env: Mapping[str, str]) -> tuple[int, list[str]]:
    """Store a first refresh token as a user does; `inventory-sync auth`'s status and lines.

    The token is the one the sandbox's admin grant issues (as Lightspeed's API setup hands one
    out), fed to the function behind `inventory-sync auth`, in `env`: it stores the token
    encrypted in the demo's state and makes one refresh. Its access token ends with it, as it
    does with the command's own process, so the next run starts by refreshing.
    """
    import httpx

    from flows.cli.auth import authorize
    from tasks.lightspeed.auth import close_providers

    granted = httpx.post(f"{sandbox.url}/_sandbox/oauth/grant", timeout=10)
    granted.raise_for_status()
    token = str(granted.json()["refresh_token"])
    said = io.StringIO()
    with _environment(env), contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        try:
            status = authorize(config, check=False, read_token=lambda: token)
        finally:
            close_providers()
    return status, said.getvalue().splitlines()


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """This process's environment with `env` in it, restored afterwards."""
    before = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def expected_quantities(catalog: list[dict[str, Any]]) -> dict[str, int]:
    """The rules of docs/design.md, in plain Python, as an independent check of the pipeline."""
    skus = defaultdict(list)
    for p in catalog:
        skus[p["vendorSku"]].append(p)
    held: set[str] = set()
    totals: dict[str, int] = defaultdict(int)
    for warehouse, rows in demo_feeds().items():
        sums: dict[str, int] = defaultdict(int)
        for sku, text in rows:
            sku, text = sku.strip(), text.strip()
            if not sku or sku not in skus:
                continue
            try:
                value = float(text)
            except ValueError:
                held.add(sku)
                continue
            if value != int(value):
                held.add(sku)
                continue
            sums[sku] += int(value)
        for sku, total in sums.items():
            totals[sku] += max(total - SAFETY_STOCK[warehouse], 0)
    expected = {}
    for sku, products in skus.items():
        for p in products:
            flag = (p.get("inventory") or {}).get("isInventoryTrackingEnabled")
            tracked = bool(flag[0] if isinstance(flag, list) else flag)
            if len(products) > 1 or not tracked or sku in held:
                expected[p["id"]] = p["quantity"]  # untouched
            else:
                expected[p["id"]] = totals.get(sku, 0)
    return expected


def write_demo(folder: Path) -> list[dict[str, Any]]:
    """Write the catalog JSON and the feeds under `folder`; return the catalog.

    The demo's state is cleared too: a fresh sandbox holds none of what an earlier demo pushed.
    """
    shutil.rmtree(folder / "state", ignore_errors=True)
    feeds = folder / "feeds"
    feeds.mkdir(parents=True, exist_ok=True)
    catalog = demo_catalog()
    (folder / "catalog.json").write_text(json.dumps({"products": catalog}, indent=1), "utf-8")
    rows = demo_feeds()
    for old in feeds.glob("east-*.csv"):
        old.unlink()
    (feeds / "east-20260101.csv").write_text("sku,bin,qty\nTEE-RED-S,A1,999\n", "utf-8")  # stale
    east = "sku,bin,qty\r\n" + "".join(
        f"{sku},B{i % 4},{qty}\r\n" for i, (sku, qty) in enumerate(rows["east"])
    )
    (feeds / "east-20261126.csv").write_bytes(b"\xef\xbb\xbf" + east.encode("utf-8"))
    old_mtime = (feeds / "east-20261126.csv").stat().st_mtime - 86400
    os.utime(feeds / "east-20260101.csv", (old_mtime, old_mtime))
    west = "Article;Stock\n" + "".join(f"{sku};{qty}\n" for sku, qty in rows["west"])
    (feeds / "west.csv").write_bytes(west.encode("cp1252"))
    pl.DataFrame(
        {
            "item_code": [s for s, _ in rows["north"]],
            "on_hand": [int(q) for _, q in rows["north"]],
        }
    ).write_parquet(feeds / "north.parquet")
    write_south_db(feeds / "south.sqlite", rows["south"])
    return catalog


def write_south_db(path: Path, rows: list[tuple[str, str]]) -> None:
    """The south warehouse keeps stock in a database: one row per SKU and location."""
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE stock_levels (sku TEXT, location TEXT, on_hand INTEGER)")
        db.executemany(
            "INSERT INTO stock_levels VALUES (?, ?, ?)",
            [(sku, f"S{i % 3}", int(qty)) for i, (sku, qty) in enumerate(rows)],
        )
    db.close()


def run_demo(folder: Path) -> int:
    """Serve the sandbox, sync the demo feeds once, and check the sandbox holds what it should."""
    from flows.cli.run import run_once
    from sandbox.server import SandboxServer

    folder = folder.resolve()
    config = folder / "inventory-sync.toml"
    catalog = write_demo(folder)
    with SandboxServer(
        products=catalog, token=DEMO_TOKEN, port=0, access_token_seconds=DEMO_ACCESS_TOKEN_SECONDS
    ) as server:
        env = sandbox_env(server, folder)  # the sandbox's secrets, never real ones
        os.environ.update(env)
        os.environ["LIGHTSPEED_TOKEN"] = DEMO_TOKEN  # the sandbox's, never a real one
        print(
            f"Sandbox Lightspeed API on {server.url} with {len(catalog)} demo products; "
            f"its access tokens last {DEMO_ACCESS_TOKEN_SECONDS:.0f} s"
        )
        print("Signing in as `inventory-sync auth` does, with the sandbox's first refresh token:")
        status, said = sign_in(config, server, env)
        print("\n".join(f"  {line}" for line in said))
        if status:
            return status
        status = run_once(config)
        print(f"Sandbox token endpoint: {server.oauth.stats().refreshes} refresh(es) in all.")
        expected = expected_quantities(catalog)
        held = server.quantities()
    wrong = {pid: (held.get(pid), want) for pid, want in expected.items() if held.get(pid) != want}
    if wrong:
        print(f"Demo check FAILED: {len(wrong)} product(s) differ from the expected quantity:")
        for pid, (got, want) in list(wrong.items())[:10]:
            print(f"  {pid}: sandbox holds {got}, expected {want}")
        return 1
    print(f"Demo check: the sandbox holds the expected quantity for all {len(expected)} products.")
    return status
