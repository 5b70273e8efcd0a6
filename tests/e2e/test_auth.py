"""OAuth journeys through the real command, a real Prefect server and the sandbox on loopback.

Access tokens last seconds here instead of 15 minutes, so runs refresh many times over; the
sandbox revokes each refresh token when it issues the next, and counts any presented twice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import csv_warehouse, pid, product
from cli_runs import CLI, cli, cli_env, flow_run_of, run_logs

from sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, TOKEN_PATH
from sandbox.server import Fault, SandboxServer
from tasks.lightspeed.auth import EVENT_AUTH_FAILED
from tasks.state.tokens import new_key

pytestmark = pytest.mark.slow

KEY = new_key()
SECRETS = {"LS_CLIENT_SECRET": DEFAULT_CLIENT_SECRET, "LS_TOKEN_KEY": KEY}
SKUS = [f"S{i}" for i in range(8)]


def oauth(sandbox: SandboxServer, account: str = "acme", extra: str = "chunk_size = 2") -> str:
    """The [lightspeed] lines of an oauth configuration against the sandbox's token endpoint."""
    return textwrap.dedent(
        f"""
        account = "{account}"
        {extra}
        [lightspeed.auth]
        kind = "oauth"
        token_url = "{sandbox.url}{TOKEN_PATH}"
        client_id = "{DEFAULT_CLIENT_ID}"
        client_secret = {{ env = "LS_CLIENT_SECRET" }}
        encryption_key = {{ env = "LS_TOKEN_KEY" }}
        """
    )


def feed(folder: Path, quantities: dict[str, int], name: str = "east.csv") -> None:
    (folder / "feeds").mkdir(exist_ok=True)
    temporary = folder / "feeds" / f".{name}.tmp"
    temporary.write_text("sku,qty\n" + "".join(f"{s},{q}\n" for s, q in quantities.items()))
    temporary.replace(folder / "feeds" / name)  # a run never reads half a feed


def authorize(config: Path, token: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`inventory-sync auth`, the refresh token on standard input, as a person pipes it in."""
    return subprocess.run(
        [*CLI, "auth", "--config", str(config), *args],
        input=token,
        cwd=cwd,
        env=cli_env(**SECRETS),
        capture_output=True,
        text=True,
        timeout=180,
    )


def run(config: Path, api: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("run", "--config", str(config), *args, api=api, cwd=cwd, **SECRETS)


def events(api: str, name: str, since: str, want: int = 1, timeout: float = 30) -> list[Any]:
    """Events of this name since then, once `want` of them are on the server."""
    body = {
        "filter": {"event": {"name": [name]}, "occurred": {"since": since}},
        "limit": 50,
    }
    deadline = time.monotonic() + timeout
    while True:
        found = httpx.post(f"{api}/events/filter", json=body, timeout=10).json()["events"]
        if len(found) >= want or time.monotonic() > deadline:
            return list(found)
        time.sleep(0.3)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))


def api_requests(sandbox: SandboxServer) -> list[Any]:
    return [r for r in sandbox.requests() if r.path != TOKEN_PATH]


@pytest.fixture
def oauth_config(tmp_path, sandbox, write_config) -> Path:
    sandbox.reset([product(s) for s in SKUS])
    feed(tmp_path, {s: 10 + i for i, s in enumerate(SKUS)})
    config = write_config(csv_warehouse("east", "feeds/east.csv"), lightspeed=oauth(sandbox))
    stored = authorize(config, sandbox.oauth.grant(), cwd=tmp_path)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert "Stored the refresh token" in stored.stdout and "valid until" in stored.stdout
    sandbox.reset()  # the request log: what the tests' runs send
    return config


def test_auth_check_exits_0_then_1_once_the_token_is_revoked(oauth_config, sandbox, tmp_path):
    ok = authorize(oauth_config, "", "--check", cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: account 'acme'"), ok.stderr
    sandbox.oauth.revoke_all()
    refused = authorize(oauth_config, "", "--check", cwd=tmp_path)
    assert refused.returncode == 1
    assert f"inventory-sync auth --config {oauth_config}" in refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr


def test_auth_refuses_an_empty_token_and_a_static_configuration(sandbox, write_config, tmp_path):
    static = write_config(csv_warehouse("east", "feeds/east.csv"), name="static.toml")
    refused = authorize(static, "whatever", cwd=tmp_path)
    assert refused.returncode == 2 and 'kind = "static"' in refused.stderr
    config = write_config(csv_warehouse("east", "feeds/east.csv"), lightspeed=oauth(sandbox))
    empty = authorize(config, "", cwd=tmp_path)
    assert empty.returncode == 2 and "no refresh token given" in empty.stderr


def test_a_revoked_refresh_token_fails_the_run_before_anything_is_sent(
    oauth_config, sandbox, tmp_path, prefect_api
):
    since = now_iso()
    sandbox.oauth.revoke_all()
    asked = sandbox.arrivals(TOKEN_PATH)

    result = run(oauth_config, prefect_api, tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert f"store it: inventory-sync auth --config {oauth_config}" in errors[0]
    assert "invalid_grant" in errors[0] and errors[0].endswith("(nothing was sent)")
    assert api_requests(sandbox) == []  # no GET, no PUT: nothing was sent
    assert sandbox.oauth.stats().reused == 0
    [event] = events(prefect_api, EVENT_AUTH_FAILED, since)
    assert event["resource"]["prefect.resource.id"] == "inventory-sync.auth.acme"
    assert "inventory-sync auth --config" in event["payload"]["error"]
    flow_run = flow_run_of(oauth_config)
    assert event["related"][0]["prefect.resource.id"] == f"prefect.flow-run.{flow_run.id}"
    logs = run_logs(flow_run.id)
    assert not [m for m in logs if "Traceback" in m], "\n".join(logs)

    again = run(oauth_config, prefect_api, tmp_path)  # the store remembers the refusal
    assert again.returncode == 1 and "was refused" in again.stderr
    assert sandbox.arrivals(TOKEN_PATH) == asked + 1  # the dead token was presented once, ever
    assert sandbox.oauth.stats().reused == 0

    assert authorize(oauth_config, sandbox.oauth.grant(), cwd=tmp_path).returncode == 0
    healed = run(oauth_config, prefect_api, tmp_path)
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert sandbox.quantities() == {pid(s): 10 + i for i, s in enumerate(SKUS)}


def test_a_token_revoked_during_the_load_stops_it_and_says_what_to_do(
    oauth_config, sandbox, tmp_path, prefect_api
):
    import threading

    since = now_iso()
    sandbox.oauth.set_lifetime(1)  # every chunk after the first needs a new access token
    sandbox.add_fault(Fault(delay=600, times=1))  # the first PUT waits for the revocation
    feed(tmp_path, {s: 30 + i for i, s in enumerate(SKUS)})

    def revoke_once_a_put_is_held() -> None:
        if sandbox.wait_for_arrivals("/inventory", 1, timeout=180):
            sandbox.oauth.revoke_all()
            sandbox.oauth.expire_access_tokens()
            sandbox.end_delays()

    revoker = threading.Thread(target=revoke_once_a_put_is_held)
    revoker.start()
    result = run(oauth_config, prefect_api, tmp_path)
    revoker.join()

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert f"inventory-sync auth --config {oauth_config}" in result.stdout  # the summary's failures
    assert "did not land" in result.stdout
    assert sandbox.oauth.stats().reused == 0
    # raised in one of the load's request threads, which have no Prefect context of their own
    [event] = events(prefect_api, EVENT_AUTH_FAILED, since)
    flow_run = flow_run_of(oauth_config)
    assert event["related"][0]["prefect.resource.id"] == f"prefect.flow-run.{flow_run.id}"


@pytest.mark.parametrize("server_rotated", [True, False], ids=["rotated", "never-processed"])
def test_kill_9_in_the_middle_of_a_refresh_then_the_next_run(
    server_rotated, oauth_config, sandbox, tmp_path, prefect_api
):
    # hold the next refresh inside the token endpoint; then either issue the new token into
    # a dead connection, or drop the request unprocessed
    drop = None if server_rotated else "before"
    sandbox.add_fault(Fault(method="POST", path=TOKEN_PATH, delay=600, drop=drop))
    arrived = sandbox.arrivals(TOKEN_PATH)
    doomed = subprocess.Popen(
        [*CLI, "run", "--config", str(oauth_config)],
        cwd=tmp_path,
        env=cli_env(api=prefect_api, **SECRETS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert sandbox.wait_for_arrivals(TOKEN_PATH, arrived + 1, timeout=180)
    finally:
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
    refreshes = sandbox.oauth.stats().refreshes
    sandbox.end_delays()
    if server_rotated:
        wait_until(lambda: sandbox.oauth.stats().refreshes == refreshes + 1, "no rotation")
    else:
        wait_until(lambda: any(r.dropped for r in sandbox.requests()), "not dropped")
    sandbox.reset()

    after = run(oauth_config, prefect_api, tmp_path)

    output = after.stdout + after.stderr
    assert "Traceback" not in output
    if not server_rotated:  # the stored token was never used: the next run just works
        assert after.returncode == 0, output
        assert sandbox.oauth.stats().reused == 0
        assert sandbox.quantities() == {pid(s): 10 + i for i, s in enumerate(SKUS)}
        return
    # the new token died with the process: the next run says so, sends nothing, names the fix
    assert after.returncode == 1, output
    [error] = [line for line in after.stderr.splitlines() if line.startswith("error: ")]
    assert re.search(r"a refresh \(pid \d+ on .*\) never finished", error), error
    assert f"inventory-sync auth --config {oauth_config}" in error
    assert api_requests(sandbox) == []
    assert authorize(oauth_config, sandbox.oauth.grant(), cwd=tmp_path).returncode == 0
    healed = run(oauth_config, prefect_api, tmp_path)
    assert healed.returncode == 0, healed.stdout + healed.stderr


def test_a_full_sync_of_100k_products_with_10_second_tokens(
    tmp_path, sandbox, write_config, prefect_api
):
    count = 100_000
    skus = [f"P{i:06d}" for i in range(count)]
    sandbox.reset([product(s) for s in skus])
    feed(tmp_path, {s: i % 997 for i, s in enumerate(skus)})
    config = write_config(
        csv_warehouse("east", "feeds/east.csv"),
        lightspeed=oauth(sandbox, extra="per_page = 1000\nchunk_size = 2000"),
    )
    assert authorize(config, sandbox.oauth.grant(), cwd=tmp_path).returncode == 0
    sandbox.oauth.set_lifetime(10)
    sandbox.reset()
    started = time.monotonic()

    result = run(config, prefect_api, tmp_path, "--full")

    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert sandbox.quantities() == {pid(s): i % 997 for i, s in enumerate(skus)}
    match = re.search(r"Access tokens: (\d+) refreshed(?: \((\d+) after a 401\))?", result.stdout)
    assert match, result.stdout
    refreshes, after_401 = int(match[1]), int(match[2] or 0)
    assert refreshes >= max(1, int(seconds // 10) - 1), (refreshes, seconds)  # one per life
    assert "(0 retried)" in result.stdout  # no chunk retry, for a 401 or anything else
    unauthorized = [r for r in api_requests(sandbox) if r.status == 401]
    assert len(unauthorized) == after_401  # each was re-sent at once with a renewed token
    assert sandbox.oauth.stats().reused == 0
    print(f"\n100k full sync with 10 s tokens: {seconds:.1f}s, {refreshes} refreshes, "
          f"{after_401} after a 401")  # fmt: skip


def test_no_secret_reaches_logs_artifacts_events_files_or_the_prefect_database(
    oauth_config, sandbox, tmp_path, prefect_api
):
    outputs = []
    sandbox.oauth.set_lifetime(1)  # refreshed during the run, not only at its start
    sandbox.add_fault(Fault(delay=0.5, times=8))  # PUTs slower than a token's life
    feed(tmp_path, {s: 20 + i for i, s in enumerate(SKUS)})
    done = run(oauth_config, prefect_api, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    outputs.append(done.stdout + done.stderr)
    sandbox.oauth.revoke_all()
    refused = run(oauth_config, prefect_api, tmp_path)
    assert refused.returncode == 1
    outputs.append(refused.stdout + refused.stderr)
    outputs.append(authorize(oauth_config, "", "--check", cwd=tmp_path).stderr)

    secrets = [*sandbox.oauth.issued(), DEFAULT_CLIENT_SECRET, KEY]
    assert len(secrets) > 6
    places = {"CLI output": "\n".join(outputs)}
    places |= {str(p): p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()}
    places |= prefect_records(prefect_api)
    places |= prefect_database_files()
    found = [(where, s[:6]) for where, text in places.items() for s in secrets if s in text]
    assert found == []
    assert any("refresh_tokens" in text for text in places.values())  # the state was searched


def prefect_records(api: str) -> dict[str, str]:
    """Every log, artifact, event, flow run and task run on the server, as the API returns them."""
    records: dict[str, str] = {}
    for name, path, body in [
        ("logs", "/logs/filter", {"limit": 200}),
        ("artifacts", "/artifacts/filter", {"limit": 200}),
        ("flow runs", "/flow_runs/filter", {"limit": 200}),
        ("task runs", "/task_runs/filter", {"limit": 200}),
        ("events", "/events/filter", {"filter": {"occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 200}),
    ]:  # fmt: skip
        records[f"Prefect {name}"] = httpx.post(api + path, json=body, timeout=30).text
    return records


def prefect_database_files() -> dict[str, str]:
    """The Prefect server's own database file(s), raw."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    text = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    database = Path(text.split("///", 1)[1])
    files = [p for p in database.parent.glob(database.name + "*") if p.is_file()]
    assert files, database
    return {str(p): p.read_bytes().decode("latin-1") for p in files}
