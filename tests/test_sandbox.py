"""The sandbox API over real HTTP on loopback: the working contract, faults and control."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.server import Fault, RecordedRequest, SandboxServer, load_catalog

TOKEN = "sandbox-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IDS = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(7)]
UNKNOWN_ID = "ffffffff-0000-4000-8000-000000000000"
PRODUCTS: list[dict[str, Any]] = [
    {
        "id": IDS[0],
        "vendorSku": "SKU-0",
        "name": "Array flags",
        "inventory": {"isBackorderingEnabled": [True], "isInventoryTrackingEnabled": [True]},
        "quantity": 10,
    },
    {
        "id": IDS[1],
        "vendorSku": "SKU-1",
        "name": "Plain flags",
        "inventory": {"isBackorderingEnabled": False, "isInventoryTrackingEnabled": True},
        "quantity": 11,
    },
    {"id": IDS[2], "vendorSku": "SKU-2", "name": "No inventory", "quantity": 12},
    {"id": IDS[3], "vendorSku": "SKU-3", "name": "No quantity", "inventory": {}},
    {
        "id": IDS[4],
        "vendorSku": "SKU-4",
        "name": "One flag",
        "inventory": {"isInventoryTrackingEnabled": [False]},
        "quantity": 14,
    },
    {"id": IDS[5], "vendorSku": "SKU-5", "name": "Five", "quantity": 15},
    {"id": IDS[6], "vendorSku": "SKU-6", "name": "Six", "quantity": 16},
]
INITIAL = {IDS[0]: 10, IDS[1]: 11, IDS[2]: 12, IDS[3]: 0, IDS[4]: 14, IDS[5]: 15, IDS[6]: 16}


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(products=PRODUCTS, token=TOKEN) as server:
        yield server


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=5) as http:
        yield http


def put(client: httpx.Client, *items: tuple[str, object]) -> httpx.Response:
    return client.put("/inventory", json={"products": [{"id": i, "quantity": q} for i, q in items]})


# GET /products


def test_pages_follow_next_links_in_catalog_order(client: httpx.Client) -> None:
    pages = []
    link: str | None = "/products?per_page=3"
    while link is not None:
        response = client.get(link)
        assert response.status_code == 200
        pages.append(response.json())
        link = response.json()["next"]
    assert [page["next"] for page in pages] == [
        "/products?page=2&per_page=3",
        "/products?page=3&per_page=3",
        None,
    ]
    assert [[p["id"] for p in page["products"]] for page in pages] == [IDS[0:3], IDS[3:6], IDS[6:]]


def test_page_size_defaults_and_edges(client: httpx.Client) -> None:
    everything = client.get("/products").json()
    assert [p["id"] for p in everything["products"]] == IDS
    assert everything["next"] is None
    exact = client.get("/products", params={"page": 1, "per_page": 7}).json()
    assert len(exact["products"]) == 7 and exact["next"] is None
    beyond = client.get("/products", params={"page": 9, "per_page": 1000}).json()
    assert beyond == {"products": [], "next": None}


def test_products_keep_their_flags_exactly_and_show_current_quantities(
    client: httpx.Client,
) -> None:
    assert put(client, (IDS[0], 99)).status_code == 200
    served = {p["id"]: p for p in client.get("/products").json()["products"]}
    for given in PRODUCTS:
        expected = {**given, "quantity": given.get("quantity", 0)}
        if given["id"] == IDS[0]:
            expected["quantity"] = 99
        assert served[given["id"]] == expected
    assert "inventory" not in served[IDS[2]]


@pytest.mark.parametrize(
    "query",
    ["per_page=0", "per_page=1001", "per_page=-1", "per_page=", "page=0", "page=abc", "page=1.5"],
)
def test_bad_paging_parameters_are_400(client: httpx.Client, query: str) -> None:
    response = client.get(f"/products?{query}")
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)


def test_per_page_upper_bound_is_accepted(client: httpx.Client) -> None:
    assert client.get("/products?per_page=1000").status_code == 200


# auth


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Bearer"}],
    ids=["missing", "wrong-token", "no-scheme", "no-token"],
)
def test_both_endpoints_need_the_bearer_token(
    sandbox: SandboxServer, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=sandbox.url, headers=headers, timeout=5) as anonymous:
        listing = anonymous.get("/products")
        update = anonymous.put("/inventory", json={"products": [{"id": IDS[0], "quantity": 1}]})
    for response in (listing, update):
        assert response.status_code == 401
        assert response.json()["error"]
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "products" not in listing.json()
    assert sandbox.quantities() == INITIAL


# PUT /inventory


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b'{"items": []}',
        b'{"products": {"id": "x", "quantity": 1}}',
        b'{"products": [5]}',
        b'{"products": [{"quantity": 1}]}',
        b'{"products": [{"id": 7, "quantity": 1}]}',
        f'{{"products": [{{"id": "{IDS[0]}"}}]}}'.encode(),
    ],
    ids=[
        "empty",
        "not-json",
        "not-object",
        "no-products",
        "products-not-list",
        "item-not-object",
        "no-id",
        "id-not-string",
        "no-quantity",
    ],
)
def test_malformed_bodies_are_400(
    sandbox: SandboxServer, client: httpx.Client, body: bytes
) -> None:
    response = client.put("/inventory", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    assert sandbox.quantities() == INITIAL


def test_more_than_the_cap_is_413_and_the_cap_itself_passes() -> None:
    with (
        SandboxServer(products=PRODUCTS, token=TOKEN, max_products_per_call=5) as capped,
        httpx.Client(base_url=capped.url, headers=AUTH, timeout=5) as client,
    ):
        too_many = put(client, *((product_id, 1) for product_id in IDS[:6]))
        assert too_many.status_code == 413
        assert too_many.json() == {"error": "too many products in one call: 6 > 5"}
        assert capped.quantities() == INITIAL
        assert put(client, *((product_id, 1) for product_id in IDS[:5])).status_code == 200
        assert capped.quantities() == {**INITIAL, **dict.fromkeys(IDS[:5], 1)}


def test_422_lists_every_bad_item_and_applies_nothing(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    response = put(
        client,
        (IDS[0], 1),
        (UNKNOWN_ID, 1),
        (IDS[1], -1),
        (IDS[2], 3.0),
        (IDS[3], True),
        (IDS[4], "5"),
        (IDS[5], 2_147_483_648),
        (IDS[6], None),
        (IDS[0], 2),
    )
    assert response.status_code == 422
    assert response.json() == {
        "products": [
            {"id": UNKNOWN_ID, "error": "unknown product id"},
            {"id": IDS[1], "error": "invalid quantity"},
            {"id": IDS[2], "error": "invalid quantity"},
            {"id": IDS[3], "error": "invalid quantity"},
            {"id": IDS[4], "error": "invalid quantity"},
            {"id": IDS[5], "error": "invalid quantity"},
            {"id": IDS[6], "error": "invalid quantity"},
            {"id": IDS[0], "error": "duplicate id"},
        ]
    }
    assert sandbox.quantities() == INITIAL


def test_one_unknown_id_rejects_the_whole_call(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    response = put(client, (IDS[0], 1), (IDS[1], 2), (UNKNOWN_ID, 3))
    assert response.status_code == 422
    assert response.json()["products"] == [{"id": UNKNOWN_ID, "error": "unknown product id"}]
    assert sandbox.quantities() == INITIAL


def test_put_sets_absolute_quantities(sandbox: SandboxServer, client: httpx.Client) -> None:
    first = put(client, (IDS[0], 5), (IDS[3], 2_147_483_647), (IDS[4], 0))
    assert first.status_code == 200 and first.json() == {"updated": 3}
    replay = put(client, (IDS[0], 5), (IDS[3], 2_147_483_647), (IDS[4], 0))
    assert replay.json() == {"updated": 3}
    assert put(client, (IDS[0], 7)).status_code == 200
    expected = {**INITIAL, IDS[0]: 7, IDS[3]: 2_147_483_647, IDS[4]: 0}
    assert sandbox.quantities() == expected
    served = client.get("/products").json()["products"]
    assert {p["id"]: p["quantity"] for p in served} == expected


def test_empty_update_is_accepted(sandbox: SandboxServer, client: httpx.Client) -> None:
    response = client.put("/inventory", json={"products": []})
    assert response.status_code == 200 and response.json() == {"updated": 0}


def test_unknown_paths_are_404_and_wrong_methods_405(client: httpx.Client) -> None:
    missing = client.get("/orders")
    assert missing.status_code == 404 and missing.json()["error"]
    for response, allowed in (
        (client.post("/inventory", json={"products": []}), "PUT"),
        (client.delete("/products"), "GET"),
    ):
        assert response.status_code == 405
        assert response.headers["Allow"] == allowed
        assert response.json()["error"]


def test_concurrent_updates_all_land(sandbox: SandboxServer) -> None:
    def push(round_no: int) -> int:
        with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=5) as http:
            statuses = [put(http, (IDS[round_no], value)).status_code for value in range(1, 31)]
        return statuses.count(200)

    with ThreadPoolExecutor(max_workers=7) as pool:
        assert sum(pool.map(push, range(7))) == 7 * 30
    assert sandbox.quantities() == dict.fromkeys(IDS, 30)
    assert len(sandbox.requests()) == 7 * 30


# faults


def test_429_carries_retry_after_then_the_retry_succeeds(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    sandbox.add_fault(Fault(status=429, retry_after=2))
    limited = put(client, (IDS[0], 1))
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert sandbox.quantities() == INITIAL
    retried = put(client, (IDS[0], 1))
    assert retried.status_code == 200
    assert sandbox.quantities()[IDS[0]] == 1
    assert sandbox.faults() == []


def test_503_applies_nothing(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.add_fault(Fault(status=503))
    failed = put(client, (IDS[0], 1))
    assert failed.status_code == 503
    assert "Retry-After" not in failed.headers
    assert sandbox.quantities() == INITIAL
    assert put(client, (IDS[0], 1)).status_code == 200


def test_delay_slows_the_response_and_still_applies(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    sandbox.add_fault(Fault(delay=0.3))
    started = time.monotonic()
    response = put(client, (IDS[0], 3))
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200
    assert sandbox.quantities()[IDS[0]] == 3


def test_drop_before_closes_the_connection_and_applies_nothing(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    sandbox.add_fault(Fault(drop="before"))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        put(client, (IDS[0], 4))
    assert sandbox.quantities() == INITIAL
    assert sandbox.requests()[-1].dropped is True
    assert sandbox.requests()[-1].status == 0
    assert put(client, (IDS[0], 4)).status_code == 200


def test_drop_after_applies_then_closes_the_connection(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    sandbox.add_fault(Fault(drop="after"))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        put(client, (IDS[0], 4))
    assert sandbox.quantities()[IDS[0]] == 4
    last = sandbox.requests()[-1]
    assert (last.status, last.dropped) == (200, True)


def test_if_contains_id_targets_only_the_chunk_with_that_id(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    sandbox.add_fault(Fault(status=500, if_contains_id=IDS[5]))
    assert client.get("/products").status_code == 200
    assert put(client, (IDS[0], 1), (IDS[1], 1)).status_code == 200
    assert put(client, (IDS[4], 1), (IDS[5], 1)).status_code == 500
    assert sandbox.quantities()[IDS[4]] == INITIAL[IDS[4]]
    assert put(client, (IDS[4], 1), (IDS[5], 1)).status_code == 200
    assert sandbox.quantities() == {**INITIAL, **dict.fromkeys(IDS[:2] + IDS[4:6], 1)}


def test_times_and_insertion_order(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.add_fault(Fault(status=500, times=2))
    sandbox.add_fault(Fault(status=503))
    assert sandbox.faults() == [Fault(status=500, times=2), Fault(status=503)]
    statuses = [put(client, (IDS[0], 1)).status_code for _ in range(4)]
    assert statuses == [500, 500, 503, 200]
    assert sandbox.faults() == []


def test_faults_match_method_and_path_prefix_but_never_control_endpoints(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    sandbox.add_fault(Fault(method="get", path="/", status=502, times=3))
    assert client.get(f"{sandbox.url}/_sandbox/quantities").status_code == 200
    assert put(client, (IDS[0], 1)).status_code == 200
    assert client.get("/products").status_code == 502
    assert sandbox.faults() == [Fault(method="GET", path="/", status=502, times=2)]


@pytest.mark.parametrize(
    "fields",
    [
        {"drop": "sometimes"},
        {"drop": "before", "status": 503},
        {"retry_after": 5},
        {"status": 99},
        {"status": True},
        {"times": 0},
        {"delay": -1},
        {"path": "inventory"},
    ],
)
def test_nonsensical_faults_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Fault(**fields)


# control endpoints and the request log


def test_control_endpoints_over_http(sandbox: SandboxServer, client: httpx.Client) -> None:
    plain = httpx.Client(base_url=sandbox.url, timeout=5)  # control needs no token
    added = plain.post(
        "/_sandbox/faults",
        json=[{"status": 429, "retry_after": 1}, {"drop": "after", "if_contains_id": IDS[1]}],
    )
    assert added.status_code == 200 and added.json() == {"added": 2}
    assert plain.post("/_sandbox/faults", json={"status": 503}).status_code == 200
    assert plain.post("/_sandbox/faults", json=[{"status": 500}, {"bogus": 1}]).status_code == 400
    assert len(plain.get("/_sandbox/faults").json()["faults"]) == 3

    assert put(client, (IDS[0], 1)).headers["Retry-After"] == "1"
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        put(client, (IDS[1], 2))
    assert put(client, (IDS[0], 1)).status_code == 503
    assert put(client, (IDS[0], 1)).status_code == 200

    quantities = plain.get("/_sandbox/quantities").json()
    assert quantities == {"quantities": {**INITIAL, IDS[0]: 1, IDS[1]: 2}}
    log = plain.get("/_sandbox/requests").json()["requests"]
    assert [(r["status"], r["dropped"], r["product_ids"]) for r in log] == [
        (429, False, [IDS[0]]),
        (200, True, [IDS[1]]),
        (503, False, [IDS[0]]),
        (200, False, [IDS[0]]),
    ]
    assert {r["method"] for r in log} == {"PUT"} and {r["path"] for r in log} == {"/inventory"}

    plain.post("/_sandbox/faults", json={"status": 500})
    assert plain.post("/_sandbox/reset").json() == {"reset": True}
    assert plain.get("/_sandbox/requests").json() == {"requests": []}
    assert put(client, (IDS[0], 8)).status_code == 200  # the fault is gone
    assert plain.get("/_sandbox/quantities").json()["quantities"][IDS[1]] == 2  # kept
    assert plain.get("/_sandbox/nothing").status_code == 404
    plain.close()


def test_request_log_records_what_the_server_saw(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    before = time.monotonic()
    client.get("/products?page=2&per_page=3")
    put(client, (IDS[2], 1), (IDS[0], 1))
    put(client, (UNKNOWN_ID, 1))
    client.put("/inventory", content=b"oops")
    client.get("/products", headers={"Authorization": "Bearer nope"})
    client.get(f"{sandbox.url}/_sandbox/quantities")
    log = sandbox.requests()
    assert [(r.method, r.path, r.status, r.product_ids, r.dropped) for r in log] == [
        ("GET", "/products?page=2&per_page=3", 200, (), False),
        ("PUT", "/inventory", 200, (IDS[2], IDS[0]), False),
        ("PUT", "/inventory", 422, (UNKNOWN_ID,), False),
        ("PUT", "/inventory", 400, (), False),
        ("GET", "/products", 401, (), False),
    ]
    stamps = [r.at for r in log]
    assert before <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= time.monotonic()
    assert all(isinstance(r, RecordedRequest) for r in log)


def test_reset_can_replace_the_catalog(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.add_fault(Fault(status=500))
    put(client, (IDS[0], 1))
    sandbox.reset(products=[{"id": "new", "vendorSku": "N", "name": "New", "quantity": 3}])
    assert sandbox.quantities() == {"new": 3}
    assert sandbox.requests() == [] and sandbox.faults() == []
    assert put(client, ("new", 4)).status_code == 200
    assert put(client, (IDS[0], 4)).json()["products"][0]["error"] == "unknown product id"


# lifecycle and loading


def test_stop_closes_connections_and_releases_the_port() -> None:
    server = SandboxServer(products=PRODUCTS, token=TOKEN).start()
    port = server.port
    assert server.url == f"http://127.0.0.1:{port}"
    kept_alive = httpx.Client(base_url=server.url, headers=AUTH, timeout=2)
    assert kept_alive.get("/products").status_code == 200
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    with pytest.raises(httpx.TransportError):
        kept_alive.get("/products")
    kept_alive.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/products", timeout=2)

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()
    with SandboxServer(products=PRODUCTS, token=TOKEN, port=port) as again:
        assert httpx.get(f"{again.url}/products", headers=AUTH).status_code == 200


def test_bad_catalogs_are_refused() -> None:
    with pytest.raises(ValueError):
        SandboxServer(products=[{"id": "a"}, {"id": "a"}])
    with pytest.raises(ValueError):
        SandboxServer(products=[{"id": "a", "quantity": -1}])


def test_load_catalog_reads_the_get_shape(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"products": PRODUCTS}))
    loaded = load_catalog(path)
    assert [p["id"] for p in loaded] == IDS
    assert loaded[0]["inventory"] == {
        "isBackorderingEnabled": [True],
        "isInventoryTrackingEnabled": [True],
    }
    assert loaded[3]["quantity"] == 0
    (tmp_path / "bad.json").write_text(json.dumps(PRODUCTS))
    with pytest.raises(ValueError):
        load_catalog(tmp_path / "bad.json")


def test_serve_prints_one_line_without_the_token_and_stops_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"products": PRODUCTS}))
    secret = "s3cret-token-value"
    code = (
        "import sys; from sandbox.server import serve; "
        "serve('127.0.0.1', 0, sys.argv[1], sys.argv[2], 1000)"
    )
    env = {key: value for key, value in os.environ.items() if key != "SANDBOX_LOG"}
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(path), secret],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("Sandbox Lightspeed API on http://127.0.0.1:")
        assert "(7 products, token from " in line and secret not in line
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        headers = {"Authorization": f"Bearer {secret}"}
        assert httpx.get(f"{url}/products", headers=headers).status_code == 200
        assert httpx.get(f"{url}/products").status_code == 401
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0
    assert stdout == "" and stderr == ""  # no per-request log lines
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/products", timeout=2)
