"""The sandbox API over real HTTP on loopback: the working contract, faults and control."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.server import Bucket, Fault, RecordedRequest, SandboxServer, load_catalog

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


def test_end_delays_answers_the_held_requests_now_and_disarms_the_delays(
    sandbox: SandboxServer,
) -> None:
    sandbox.add_fault(Fault(delay=60, times=3))
    sandbox.add_fault(Fault(status=503, times=1))

    def send(quantity: int) -> tuple[int, float]:
        with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=90) as http:
            started = time.monotonic()
            status = put(http, (IDS[0], quantity)).status_code
            return status, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=2) as pool:
        held = [pool.submit(send, q) for q in (5, 6)]
        deadline = time.monotonic() + 10
        while sandbox.max_in_flight().get(TOKEN, 0) < 2:
            assert time.monotonic() < deadline, "the two PUTs never reached the sandbox"
            time.sleep(0.02)
        assert not any(f.done() for f in held)
        sandbox.end_delays()
        answers = [f.result(timeout=10) for f in held]
    assert [status for status, _ in answers] == [200, 200]
    assert all(seconds < 10 for _, seconds in answers)  # not the 60 s the fault asked for
    assert sandbox.quantities()[IDS[0]] in (5, 6)  # held, then applied
    assert sandbox.faults() == [Fault(status=503, times=1)]  # the delay's third use is gone

    with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=5) as http:
        assert put(http, (IDS[0], 7)).status_code == 503  # faults without a delay still fire
        assert put(http, (IDS[0], 7)).status_code == 200


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
        {"rate": 0},
        {"rate": 1.5},
        {"rate": True},
        {"rate": math.nan},
        {"seed": 3},
        {"rate": 0.5, "seed": 1.5},
        {"rate": 0.5, "times": 0},
        {"query_contains": ""},
        {"query_contains": 7},
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
        cwd=Path(__file__).resolve().parents[2],
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


# faults on GET /products pages: rate, seed, query_contains


def page_statuses(client: httpx.Client, count: int) -> list[int]:
    """Fetch one-product pages round the catalog `count` times; the statuses in order."""
    pages = len(IDS)
    return [
        client.get(f"/products?page={n % pages + 1}&per_page=1").status_code for n in range(count)
    ]


def read_catalog(client: httpx.Client, per_page: int, attempts: int = 20) -> list[str]:
    """Follow the next links like a careful reader, retrying a page until it comes back 200."""
    ids: list[str] = []
    link: str | None = f"/products?page=1&per_page={per_page}"
    while link is not None:
        for _ in range(attempts):
            try:
                response = client.get(link)
            except httpx.TransportError:
                continue
            if response.status_code == 200:
                break
        else:
            raise AssertionError(f"{link} never came back 200 in {attempts} attempts")
        ids += [product["id"] for product in response.json()["products"]]
        link = response.json()["next"]
    return ids


def successes_per_page(sandbox: SandboxServer) -> Counter[str]:
    """How many times each GET query was answered 200 and actually delivered."""
    return Counter(
        r.query
        for r in sandbox.requests()
        if r.method == "GET" and r.status == 200 and not r.dropped
    )


def test_rate_faults_hit_about_their_share_and_replay_with_the_seed(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    fault = Fault(method="GET", path="/products", status=503, rate=0.25, times=None)
    sandbox.add_fault(fault)
    first = page_statuses(client, 2000)
    assert set(first) == {200, 503}
    assert abs(first.count(503) - 500) <= 80  # 4 standard deviations of Binomial(2000, 0.25)
    assert sandbox.faults() == [fault]  # times=None: never used up
    assert len(sandbox.requests()) == 2000

    sandbox.reset()  # keeps seed 0 and re-seeds: the same draws again
    sandbox.add_fault(fault)
    assert page_statuses(client, 100) == first[:100]
    sandbox.reset(seed=1)
    sandbox.add_fault(fault)
    assert page_statuses(client, 100) != first[:100]


def test_a_fault_with_its_own_seed_draws_the_same_whatever_the_server_seed() -> None:
    fault = Fault(method="GET", path="/products", status=500, rate=0.5, times=None, seed=42)
    runs = []
    for server_seed in (1, 2, None):
        with (
            SandboxServer(products=PRODUCTS, token=TOKEN, seed=server_seed) as server,
            httpx.Client(base_url=server.url, headers=AUTH, timeout=5) as client,
        ):
            server.add_fault(fault)
            runs.append(page_statuses(client, 60))
    assert runs[0] == runs[1] == runs[2]
    assert 15 <= runs[0].count(500) <= 45


def test_times_caps_a_rate_fault_and_a_miss_falls_through_to_later_faults(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    sandbox.add_fault(Fault(method="GET", path="/products", status=503, rate=0.5, times=5))
    sandbox.add_fault(Fault(method="GET", path="/products", status=500, times=1))
    statuses = page_statuses(client, 60)
    assert statuses.count(503) == 5 and statuses.count(500) == 1
    assert next(status for status in statuses if status != 503) == 500
    assert statuses[-20:] == [200] * 20
    assert sandbox.faults() == []


def test_query_contains_targets_one_page_wherever_its_parameter_sits(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    sandbox.add_fault(
        Fault(method="GET", path="/products", status=503, query_contains="&page=3&", times=2)
    )
    statuses = {
        page: client.get(f"/products?page={page}&per_page=1").status_code for page in (1, 2, 3, 4)
    }
    assert statuses == {1: 200, 2: 200, 3: 503, 4: 200}
    assert client.get("/products?page=13&per_page=1").status_code == 200  # not "page=3"
    assert client.get("/products?per_page=1&page=3").status_code == 503  # last parameter
    assert client.get("/products?page=3&per_page=1").status_code == 200  # both times used
    assert put(client, (IDS[0], 1)).status_code == 200


PAGE_FAULTS: dict[str, dict[str, Any]] = {
    "503": {"status": 503},
    "429": {"status": 429, "retry_after": 1},
    "drop-before": {"drop": "before"},
    "drop-after": {"drop": "after"},
}


@pytest.mark.parametrize("kind", PAGE_FAULTS)
def test_a_fault_on_one_page_is_retried_and_each_page_lands_exactly_once(
    sandbox: SandboxServer, client: httpx.Client, kind: str
) -> None:
    sandbox.add_fault(
        Fault(method="GET", path="/products", query_contains="&page=2&", **PAGE_FAULTS[kind])
    )
    assert read_catalog(client, per_page=3) == IDS
    log = sandbox.requests()
    assert [r.query for r in log] == [
        "page=1&per_page=3",
        "page=2&per_page=3",
        "page=2&per_page=3",
        "page=3&per_page=3",
    ]
    failed = log[1]
    expected = {
        "503": (503, False),
        "429": (429, False),
        "drop-before": (0, True),
        "drop-after": (200, True),
    }
    assert (failed.status, failed.dropped) == expected[kind]
    assert successes_per_page(sandbox) == Counter(
        {"page=1&per_page=3": 1, "page=2&per_page=3": 1, "page=3&per_page=3": 1}
    )


def test_a_429_on_a_page_carries_its_retry_after(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    sandbox.add_fault(Fault(method="GET", path="/products", status=429, retry_after=3))
    limited = client.get("/products?page=1&per_page=2")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert limited.json() == {"error": "injected fault: 429"}


def test_a_delay_slows_only_the_targeted_page(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.add_fault(Fault(method="GET", path="/products", delay=0.3, query_contains="&page=2&"))
    took = {}
    for page in (1, 2, 3):
        started = time.monotonic()
        assert client.get(f"/products?page={page}&per_page=3").status_code == 200
        took[page] = time.monotonic() - started
    assert took[2] >= 0.3 and took[1] < 0.3 and took[3] < 0.3


@pytest.mark.parametrize("kind", [*PAGE_FAULTS, "delay"])
def test_every_fault_kind_combines_with_a_rate_on_pages(
    sandbox: SandboxServer, client: httpx.Client, kind: str
) -> None:
    effect = PAGE_FAULTS.get(kind, {"delay": 0.05})
    sandbox.add_fault(Fault(method="GET", path="/products", rate=0.4, times=None, **effect))
    for per_page in (1, 2, 3):
        assert read_catalog(client, per_page) == IDS
    expected_pages = {
        f"page={page}&per_page={per_page}"
        for per_page in (1, 2, 3)
        for page in range(1, math.ceil(len(IDS) / per_page) + 1)
    }
    assert successes_per_page(sandbox) == Counter(dict.fromkeys(expected_pages, 1))
    log = sandbox.requests()
    if kind == "delay":  # a sequential reader's next request waits for the slow answer
        gaps = [later.at - earlier.at for earlier, later in pairwise(log)]
        hit = sum(gap >= 0.05 for gap in gaps)
        assert all(r.status == 200 and not r.dropped for r in log)
    else:
        hit = sum(r.status != 200 or r.dropped for r in log)
        assert len(log) == len(expected_pages) + hit
    assert 0.15 * len(log) <= hit <= 0.65 * len(log)


def test_rate_faults_over_the_control_endpoint(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    plain = httpx.Client(base_url=sandbox.url, timeout=5)
    added = plain.post(
        "/_sandbox/faults",
        json=[
            {"method": "GET", "path": "/products", "status": 503, "rate": 1, "times": None},
            {"status": 500, "times": None},
        ],
    )
    assert added.status_code == 200
    faults = plain.get("/_sandbox/faults").json()["faults"]
    assert [(f["rate"], f["times"], f["seed"], f["query_contains"]) for f in faults] == [
        (1, None, None, None),
        (None, 1, None, None),  # a plain fault's null times means once
    ]
    assert page_statuses(client, 10) == [503] * 10
    assert [put(client, (IDS[0], 1)).status_code for _ in range(2)] == [500, 200]
    plain.close()


def test_the_request_log_keeps_the_query_string(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    client.get("/products?page=2&per_page=3")
    client.get("/products")
    client.get("/products?per_page=oops")
    put(client, (IDS[0], 1))
    expected = ["page=2&per_page=3", "", "per_page=oops", ""]
    assert [r.query for r in sandbox.requests()] == expected
    assert sandbox.requests()[0].path == "/products?page=2&per_page=3"
    rows = httpx.get(f"{sandbox.url}/_sandbox/requests").json()["requests"]
    assert [row["query"] for row in rows] == expected


# the leaky bucket

LEVEL = "X-LS-API-Bucket-Level"
DRIP = "X-LS-API-Drip-Rate"
LEVEL_FORMAT = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]{0,2}[1-9])?/60")


def used(response: httpx.Response) -> float:
    """The bucket level a response reports."""
    return float(response.headers[LEVEL].split("/")[0])


@pytest.fixture
def limited() -> Iterator[SandboxServer]:
    with SandboxServer(
        products=PRODUCTS, token=TOKEN, bucket=Bucket(drip_per_second=0.5)
    ) as server:
        yield server


def test_bucket_headers_are_formatted_like_lightspeeds() -> None:
    bucket = Bucket()
    assert bucket.headers(12.5) == ((LEVEL, "12.5/60"), (DRIP, "1"))
    assert dict(bucket.headers(0.0001))[LEVEL] == "0/60"
    assert dict(bucket.headers(7.12349))[LEVEL] == "7.123/60"
    assert dict(bucket.headers(59.9999))[LEVEL] == "60/60"
    assert dict(Bucket(size=12.25, drip_per_second=2.5).headers(3))[LEVEL] == "3/12.25"
    assert dict(Bucket(drip_per_second=2.5).headers(3))[DRIP] == "2.5"


def test_every_public_response_reports_the_bucket(limited: SandboxServer) -> None:
    with httpx.Client(base_url=limited.url, headers=AUTH, timeout=5) as client:
        first = client.get("/products")
        assert first.headers[LEVEL] == "1/60" and first.headers[DRIP] == "0.5"
        limited.add_fault(Fault(status=503))
        responses = [
            put(client, (IDS[0], 1)),  # the injected 503: PUT costs 10
            put(client, (IDS[0], 1)),
            put(client, (UNKNOWN_ID, 1)),
            client.put("/inventory", content=b"oops"),
            client.get("/products", headers={"Authorization": "Bearer nope"}),
            client.get("/orders"),
            client.post("/inventory", json={}),
        ]
        assert [r.status_code for r in responses] == [503, 200, 422, 400, 401, 404, 405]
        levels = [used(first)] + [used(r) for r in responses]
        assert all(LEVEL_FORMAT.fullmatch(r.headers[LEVEL]) for r in responses)
        assert all(r.headers[DRIP] == "0.5" for r in responses)
        assert [round(b - a) for a, b in pairwise(levels)] == [
            10, 10, 10, 10, 1, 1, 10,
        ]  # fmt: skip
        control = client.get("/_sandbox/quantities")
        assert LEVEL not in control.headers and DRIP not in control.headers
        assert limited.bucket_level() == pytest.approx(levels[-1], abs=0.5)  # control is free


def test_a_full_bucket_answers_429_with_retry_after_and_adds_nothing() -> None:
    with (
        SandboxServer(products=PRODUCTS, token=TOKEN, bucket=Bucket(drip_per_second=1)) as server,
        httpx.Client(base_url=server.url, headers=AUTH, timeout=5) as client,
    ):
        server.set_bucket(Bucket(drip_per_second=1), level=55)
        server.add_fault(Fault(status=500))
        refused = put(client, (IDS[0], 1))
        assert refused.status_code == 429
        assert refused.json() == {"error": "rate limited: bucket full"}
        assert refused.headers["Retry-After"] == "5"  # 10 more must fit: 55 + 10 - 60 at 1/s
        assert 54.5 <= used(refused) <= 55
        assert server.quantities() == INITIAL
        assert server.faults() == [Fault(status=500)]  # the bucket is in front of faults
        read = client.get("/products")  # 56 <= 60: a read still fits
        assert read.status_code == 200 and 55.5 <= used(read) <= 56
        server.set_bucket(Bucket(drip_per_second=1), level=60)
        full = client.get("/products")
        assert full.status_code == 429 and full.headers["Retry-After"] == "1"
        log = server.requests()
        assert [(r.method, r.status, r.product_ids) for r in log] == [
            ("PUT", 429, (IDS[0],)),
            ("GET", 200, ()),
            ("GET", 429, ()),
        ]
        assert server.bucket_level() == pytest.approx(60, abs=0.5)


def test_the_bucket_drains_over_time_and_never_below_zero() -> None:
    fast = Bucket(size=60, drip_per_second=40)
    with (
        SandboxServer(products=PRODUCTS, token=TOKEN, bucket=fast) as server,
        httpx.Client(base_url=server.url, headers=AUTH, timeout=5) as client,
    ):
        server.set_bucket(fast, level=60)
        refused = client.get("/products")
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        time.sleep(0.3)
        state = client.get("/_sandbox/bucket").json()
        assert state["bucket"] == {"size": 60, "drip_per_second": 40, "get_cost": 1, "put_cost": 10}
        assert 20 <= state["level"] <= 48  # 60 - 40/s * (at least 0.3 s)
        accepted = put(client, (IDS[0], 2))  # 60 + 10 would not fit: the drain made room
        assert accepted.status_code == 200 and 10 <= used(accepted) <= state["level"] + 10
        server.set_bucket(fast, level=5)
        time.sleep(0.2)  # 8 would drain: the level stops at 0
        assert server.bucket_level() == 0
        assert client.get("/products").headers[LEVEL] == "1/60"


def test_without_a_bucket_there_are_no_headers_and_no_limit(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    responses = [put(client, (IDS[0], n)) for n in range(10)] + [
        client.get("/products") for _ in range(70)
    ]
    assert {r.status_code for r in responses} == {200}
    assert all(LEVEL not in r.headers and DRIP not in r.headers for r in responses)
    assert sandbox.bucket() is None and sandbox.bucket_level() is None
    assert client.get("/_sandbox/bucket").json() == {"bucket": None, "level": None}


def test_the_bucket_goes_on_and_off_at_runtime(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    plain = httpx.Client(base_url=sandbox.url, timeout=5)
    turned_on = plain.post(
        "/_sandbox/bucket", json={"size": 20, "drip_per_second": 2, "put_cost": 5, "level": 18}
    )
    assert turned_on.status_code == 200
    assert turned_on.json()["bucket"] == {
        "size": 20,
        "drip_per_second": 2,
        "get_cost": 1,
        "put_cost": 5,
    }
    read = client.get("/products")
    assert read.status_code == 200 and 18.5 <= used(read) <= 19 and read.headers[DRIP] == "2"
    assert read.headers[LEVEL].endswith("/20")
    refused = put(client, (IDS[0], 1))
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"  # (19+5-20)/2
    assert sandbox.bucket() == Bucket(size=20, drip_per_second=2, put_cost=5)

    for bad in ({"size": 0}, {"bogus": 1}, {"put_cost": 100}, {"level": 99}, [1], "full"):
        response = plain.post("/_sandbox/bucket", json=bad)
        assert response.status_code == 400 and response.json()["error"]
    assert plain.post("/_sandbox/bucket").status_code == 400
    assert sandbox.bucket() == Bucket(size=20, drip_per_second=2, put_cost=5)  # unchanged

    turned_off = plain.post("/_sandbox/bucket", content=b"null")
    assert turned_off.json() == {"bucket": None, "level": None}
    after = put(client, (IDS[0], 1))
    assert after.status_code == 200 and LEVEL not in after.headers
    assert sandbox.quantities()[IDS[0]] == 1
    defaults = plain.post("/_sandbox/bucket", json={}).json()
    assert defaults == {
        "bucket": {"size": 60, "drip_per_second": 1, "get_cost": 1, "put_cost": 10},
        "level": 0,
    }
    plain.close()


def test_concurrent_requests_never_overfill_the_bucket() -> None:
    bucket = Bucket(size=60, drip_per_second=40)
    with SandboxServer(products=PRODUCTS, token=TOKEN, bucket=bucket) as server:

        def hammer(_: int) -> list[tuple[int, float, str | None]]:
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=5) as http:
                responses = [http.get("/products?per_page=1") for _ in range(60)]
            return [(r.status_code, used(r), r.headers.get("Retry-After")) for r in responses]

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            seen = [row for rows in pool.map(hammer, range(8)) for row in rows]
        elapsed = time.monotonic() - started
        statuses = Counter(status for status, _, _ in seen)
        assert set(statuses) == {200, 429} and sum(statuses.values()) == 480
        assert max(level for _, level, _ in seen) <= 60
        assert statuses[200] <= 60 + 40 * elapsed + 1  # what the bucket can let through
        assert {retry for status, _, retry in seen if status == 429} == {"1"}
        assert Counter(r.status for r in server.requests()) == statuses
        level = server.bucket_level()
        assert level is not None and 0 <= level <= 60


def test_reset_empties_the_bucket_and_keeps_or_replaces_its_config(limited: SandboxServer) -> None:
    limited.set_bucket(Bucket(size=30), level=25)
    limited.reset()
    assert limited.bucket() == Bucket(size=30)
    level = limited.bucket_level()
    assert level is not None and level < 0.01
    limited.reset(bucket=None)
    assert limited.bucket() is None
    limited.reset(bucket=Bucket(size=10))
    assert limited.bucket() == Bucket(size=10)

    plain = httpx.Client(base_url=limited.url, timeout=5)
    assert (
        plain.post("/_sandbox/reset", json={"bucket": {"size": 20}, "seed": 3}).status_code == 200
    )
    assert plain.get("/_sandbox/bucket").json()["bucket"]["size"] == 20
    assert plain.post("/_sandbox/reset", json={"bucket": None}).status_code == 200
    assert limited.bucket() is None
    for bad in (
        {"seed": "x"},
        {"bucket": {"size": -1}},
        {"bucket": 5},
        {"other": 1},
        {"products": 5},
    ):
        response = plain.post("/_sandbox/reset", json=bad)
        assert response.status_code == 400 and response.json()["error"]
    plain.close()
    assert limited.bucket() is None


@pytest.mark.parametrize(
    "fields",
    [
        {"size": 0},
        {"size": True},
        {"size": math.inf},
        {"drip_per_second": 0},
        {"drip_per_second": math.nan},
        {"get_cost": -1},
        {"put_cost": 61},
        {"put_cost": "10"},
    ],
)
def test_nonsensical_buckets_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Bucket(**fields)


def test_the_python_bucket_api_checks_its_arguments(sandbox: SandboxServer) -> None:
    with pytest.raises(TypeError):
        SandboxServer(products=PRODUCTS, bucket={"size": 60})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SandboxServer(products=PRODUCTS, seed="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sandbox.set_bucket(Bucket(), level=61)
    with pytest.raises(ValueError):
        sandbox.set_bucket(None, level=5)
    assert sandbox.bucket() is None


# changing the catalog between runs

NEW = {"id": "new-1", "vendorSku": "N-1", "name": "New", "quantity": 5}


def listing(client: httpx.Client, per_page: int = 1000) -> list[dict[str, Any]]:
    """The whole catalog as GET /products serves it, following next links."""
    products: list[dict[str, Any]] = []
    link: str | None = f"/products?per_page={per_page}"
    while link is not None:
        page = client.get(link).json()
        products += page["products"]
        link = page["next"]
    return products


def test_admin_upsert_appends_new_products_and_replaces_others_in_place(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    assert put(client, (IDS[1], 99)).status_code == 200
    untracked = {
        **PRODUCTS[1],
        "inventory": {**PRODUCTS[1]["inventory"], "isInventoryTrackingEnabled": False},
    }
    del untracked["quantity"]
    changed = httpx.post(f"{sandbox.url}/_sandbox/products", json={"upsert": [NEW, untracked]})
    assert changed.status_code == 200
    assert changed.json() == {"upserted": 2, "removed": 0, "products": 8}
    served = listing(client, per_page=3)
    assert [p["id"] for p in served] == [*IDS, "new-1"]
    assert served[1]["inventory"]["isInventoryTrackingEnabled"] is False
    assert served[1]["quantity"] == 99  # the flip keeps the live quantity
    assert served[-1] == NEW
    assert put(client, ("new-1", 6)).status_code == 200
    sandbox.upsert_products([{"id": IDS[2], "name": "Renamed", "quantity": 1}])
    assert listing(client)[2] == {"id": IDS[2], "name": "Renamed", "quantity": 1}  # replaced whole
    assert sandbox.quantities() == {**INITIAL, IDS[1]: 99, IDS[2]: 1, "new-1": 6}


def test_admin_remove_drops_products_from_pages_and_puts(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    changed = httpx.post(f"{sandbox.url}/_sandbox/products", json={"remove": [IDS[2], IDS[5]]})
    assert changed.json() == {"upserted": 0, "removed": 2, "products": 5}
    remaining = [IDS[0], IDS[1], IDS[3], IDS[4], IDS[6]]
    pages = [client.get(f"/products?page={page}&per_page=2").json() for page in (1, 2, 3)]
    assert [[p["id"] for p in page["products"]] for page in pages] == [
        remaining[0:2],
        remaining[2:4],
        remaining[4:],
    ]
    assert [page["next"] for page in pages] == [
        "/products?page=2&per_page=2",
        "/products?page=3&per_page=2",
        None,
    ]
    gone = put(client, (IDS[0], 1), (IDS[2], 1))
    assert gone.status_code == 422
    assert gone.json() == {"products": [{"id": IDS[2], "error": "unknown product id"}]}
    assert sandbox.quantities() == {i: INITIAL[i] for i in remaining}
    sandbox.remove_products([IDS[6]])
    sandbox.upsert_products([{**PRODUCTS[2]}])  # back, at the end, with its catalog quantity
    assert [p["id"] for p in listing(client, per_page=2)] == [*remaining[:4], IDS[2]]
    assert sandbox.quantities()[IDS[2]] == 12


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body must be"),
        (b"", "body must be"),
        (b"[]", "body must be"),
        (json.dumps({"upsert": [NEW], "bogus": 1}).encode(), "body must be"),
        (json.dumps({"upsert": {"id": "x"}}).encode(), "upsert must be a list"),
        (
            json.dumps({"upsert": [NEW, {"id": IDS[0], "quantity": -1}]}).encode(),
            "invalid quantity",
        ),
        (json.dumps({"upsert": [NEW, NEW]}).encode(), "new-1 appears twice in upsert"),
        (json.dumps({"upsert": [NEW, {"name": "no id"}]}).encode(), "product #1 has no string id"),
        (
            json.dumps({"upsert": [NEW], "remove": [UNKNOWN_ID]}).encode(),
            f"unknown product ids: {UNKNOWN_ID}",
        ),
        (json.dumps({"upsert": [NEW], "remove": IDS[0]}).encode(), "remove must be a list"),
        (json.dumps({"upsert": [NEW], "remove": [5]}).encode(), "remove must be a list"),
        (json.dumps({"remove": [IDS[0], IDS[0]]}).encode(), "more than once"),
        (
            json.dumps({"upsert": [PRODUCTS[0]], "remove": [IDS[0]]}).encode(),
            "both upserted and removed",
        ),
    ],
)
def test_bad_admin_changes_are_400_and_change_nothing(
    sandbox: SandboxServer, client: httpx.Client, body: bytes, message: str
) -> None:
    before = listing(client)
    response = httpx.post(f"{sandbox.url}/_sandbox/products", content=body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert listing(client) == before
    assert sandbox.quantities() == INITIAL


def test_the_python_catalog_methods_refuse_bad_input_whole(sandbox: SandboxServer) -> None:
    with pytest.raises(ValueError, match="upsert: product #1 has no string id"):
        sandbox.upsert_products([NEW, {"id": ""}])
    with pytest.raises(ValueError, match="cannot remove unknown product ids"):
        sandbox.remove_products([IDS[0], UNKNOWN_ID])
    with pytest.raises(TypeError):
        sandbox.remove_products(IDS[0])
    assert sandbox.quantities() == INITIAL


def test_serve_can_rate_limit_with_a_bucket(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"products": PRODUCTS}))
    code = (
        "import sys; from sandbox.server import Bucket, serve; "
        "serve('127.0.0.1', 0, sys.argv[1], 'tok', 1000, bucket=Bucket(size=5, put_cost=5))"
    )
    env = {key: value for key, value in os.environ.items() if key != "SANDBOX_LOG"}
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert "(7 products, token from the caller, bucket 5 draining 1/s;" in line
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        response = httpx.get(f"{url}/products", headers={"Authorization": "Bearer tok"})
        assert response.status_code == 200 and response.headers[LEVEL] == "1/5"
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()  # a failed assertion must not leave a pipe to a later test
    assert process.returncode == 0


# requests in flight per account (token)


def test_requests_in_flight_are_counted_per_token(sandbox: SandboxServer) -> None:
    sandbox.add_fault(Fault(delay=1.5, times=5))  # every PUT below takes 1.5 s: they overlap

    def send(token: str) -> int:
        with httpx.Client(base_url=sandbox.url, timeout=5) as http:
            body = {"products": [{"id": IDS[0], "quantity": 1}]}
            headers = {"Authorization": f"Bearer {token}"}
            return http.put("/inventory", json=body, headers=headers).status_code

    with ThreadPoolExecutor(max_workers=5) as pool:
        statuses = list(pool.map(send, [TOKEN, TOKEN, TOKEN, "other-account", "other-account"]))
    assert Counter(statuses) == {200: 3, 401: 2}  # refused requests were in flight too
    assert sandbox.max_in_flight() == {TOKEN: 3, "other-account": 2}

    sandbox.reset()
    assert sandbox.max_in_flight() == {}
    with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=5) as http:
        for _ in range(3):  # one after the other: never more than one at once
            assert put(http, (IDS[0], 2)).status_code == 200
        assert http.get("/products").status_code == 200
        shown = http.get("/_sandbox/in-flight").json()
    assert shown == {"max_in_flight": {TOKEN: 1}}
    assert sandbox.max_in_flight() == {TOKEN: 1}  # control requests are not counted
