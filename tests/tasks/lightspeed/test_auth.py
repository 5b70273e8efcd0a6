"""The token provider against the sandbox's token endpoint on loopback: rotation, locks, failures.

Each `TokenProvider` made here stands for one process (the CLI, a worker's run): they share
only the state database and the sandbox, as separate processes do.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from builders import product
from pydantic import SecretStr

from sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, TOKEN_PATH
from sandbox.server import Fault, SandboxServer
from tasks.config.settings import LightspeedSettings, OAuthAuth
from tasks.lightspeed.auth import (
    DEFAULT_EXPIRES_IN,
    AuthFailed,
    AuthUnavailable,
    OAuthCredentials,
    TokenCounts,
    TokenProvider,
    close_providers,
    issued_from,
)
from tasks.lightspeed.client import LightspeedClient, Unauthorized
from tasks.state.location import StateLocation
from tasks.state.tokens import RefreshTokens, new_key

KEY = new_key()


def credentials(
    sandbox: SandboxServer,
    state: StateLocation,
    *,
    account: str = "acme",
    client_auth: str = "basic",
    secret: str = DEFAULT_CLIENT_SECRET,
    key: str = KEY,
) -> OAuthCredentials:
    auth = OAuthAuth.model_validate(
        {
            "kind": "oauth",
            "token_url": sandbox.url + TOKEN_PATH,
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": {"env": "UNUSED_HERE"},
            "encryption_key": {"env": "UNUSED_HERE"},
            "client_auth": client_auth,
        }
    )
    return OAuthCredentials(
        auth, account, SecretStr(secret), SecretStr(key), state, "sync.toml", 5.0
    )


@pytest.fixture
def state(tmp_path: Path) -> StateLocation:
    return StateLocation.of(tmp_path / "state")


@pytest.fixture(autouse=True)
def closed_providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every provider a test makes is closed after it, the process's shared ones too."""
    made: list[TokenProvider] = []
    original = TokenProvider.__init__

    def tracked(self: TokenProvider, *args: object) -> None:
        original(self, *args)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(TokenProvider, "__init__", tracked)
    yield
    close_providers()
    for provider in made:
        provider.close()


def granted(sandbox: SandboxServer, state: StateLocation, account: str = "acme") -> str:
    """What `inventory-sync auth` does first: store the refresh token of the API setup."""
    token = sandbox.oauth.grant()
    RefreshTokens(state, account, SecretStr(KEY)).store(SecretStr(token), "test")
    return token


def test_a_refresh_rotates_the_stored_token_before_the_access_token_is_used(sandbox, state):
    first = granted(sandbox, state)
    provider = TokenProvider(credentials(sandbox, state))

    access = provider.bearer()

    stored = RefreshTokens(state, "acme", SecretStr(KEY)).read()
    assert stored is not None and stored.generation == 2
    assert stored.token.get_secret_value() != first  # the successor, which revoked `first`
    assert stored.refreshing is None and stored.rejected is None
    assert sandbox.oauth.accepts(access)
    assert provider.bearer() == access  # held until it nears expiry
    assert sandbox.oauth.stats().refreshes == 1


def test_the_stored_token_is_encrypted_at_rest(sandbox, state):
    granted(sandbox, state)
    TokenProvider(credentials(sandbox, state)).bearer()
    raw = (state.sqlite_path).read_bytes() + b"".join(
        p.read_bytes() for p in state.sqlite_path.parent.glob("*.sqlite3-wal")
    )
    for token in sandbox.oauth.issued():
        assert token.encode() not in raw


def test_concurrent_requests_wait_for_one_refresh(sandbox, state):
    granted(sandbox, state)
    provider = TokenProvider(credentials(sandbox, state))
    start = threading.Barrier(16)
    seen: list[str] = []

    def request() -> None:
        start.wait()
        seen.append(provider.bearer())

    threads = [threading.Thread(target=request) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1
    assert sandbox.oauth.stats().refreshes == 1


def test_processes_take_turns_and_each_uses_the_newest_stored_token(sandbox, state):
    granted(sandbox, state)
    sandbox.oauth.set_lifetime(0.2)  # shorter than the margin: every call refreshes
    providers = [TokenProvider(credentials(sandbox, state)) for _ in range(3)]
    barrier = threading.Barrier(len(providers))

    def work(provider: TokenProvider) -> None:
        barrier.wait()
        for _ in range(10):
            provider.bearer()
            sandbox.oauth.expire_access_tokens()
            provider.renewed(provider.bearer())

    threads = [threading.Thread(target=work, args=(p,)) for p in providers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = sandbox.oauth.stats()
    assert stats.reused == 0 and stats.rejected == 0
    stored = RefreshTokens(state, "acme", SecretStr(KEY)).read()
    assert stored is not None and stored.generation == stats.refreshes + 1


def test_a_401_gets_one_renewed_token(sandbox, state):
    sandbox.reset([product("A")])
    granted(sandbox, state)
    creds = credentials(sandbox, state)
    with closing(LightspeedClient(LightspeedSettings(base_url=sandbox.url), creds)) as client:
        client.get_page(client.page_url(1))
        sandbox.oauth.expire_access_tokens()  # ended earlier than announced
        assert client.get_page(client.page_url(1)).products

    assert [r.status for r in sandbox.requests() if r.method == "GET"] == [200, 401, 200]
    assert creds.tokens().counts() == TokenCounts(refreshes=2, after_401=1)


def test_a_second_401_is_unauthorized(sandbox, state):
    granted(sandbox, state)
    presented: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        presented.append(request.headers["Authorization"])
        return httpx.Response(401, json={"error": "invalid token"})

    settings = LightspeedSettings(base_url="https://api.example.test")
    client = LightspeedClient(settings, credentials(sandbox, state), httpx.MockTransport(refuse))
    with closing(client), pytest.raises(Unauthorized) as refused:
        client.put_inventory(b'{"products": []}')
    assert not isinstance(refused.value, AuthFailed)  # the API refused, not the token endpoint
    assert len(presented) == 2 and presented[0] != presented[1]
    assert sandbox.oauth.stats().refreshes == 2


def test_a_refused_refresh_token_names_the_fix_and_is_never_presented_again(sandbox, state):
    granted(sandbox, state)
    sandbox.oauth.revoke_all()
    first, second = (TokenProvider(credentials(sandbox, state)) for _ in range(2))

    with pytest.raises(AuthFailed) as refused:
        first.bearer()
    message = str(refused.value)
    assert "inventory-sync auth --config sync.toml" in message
    assert "invalid_grant" in message
    with pytest.raises(AuthFailed, match="was refused"):
        second.bearer()  # another process: the store says it was refused, so it asks no one
    stats = sandbox.oauth.stats()
    assert (stats.rejected, stats.reused) == (1, 0)
    assert sandbox.arrivals(TOKEN_PATH) == 1


def test_a_new_token_stored_by_auth_heals_a_refused_one(sandbox, state):
    granted(sandbox, state)
    sandbox.oauth.revoke_all()
    provider = TokenProvider(credentials(sandbox, state))
    with pytest.raises(AuthFailed):
        provider.bearer()
    granted(sandbox, state)  # a person ran `inventory-sync auth`
    assert sandbox.oauth.accepts(provider.bearer())


def test_a_lost_answer_says_what_happened(sandbox, state):
    granted(sandbox, state)
    sandbox.add_fault(Fault(method="POST", path=TOKEN_PATH, drop="after"))
    provider = TokenProvider(credentials(sandbox, state))

    with pytest.raises(AuthFailed) as refused:
        provider.bearer()
    message = str(refused.value)
    assert "the answer to a refresh was lost" in message
    assert "the new one never arrived" in message
    assert "inventory-sync auth --config sync.toml" in message
    assert sandbox.oauth.stats().reused == 1  # the one way to learn it had been rotated


def test_a_refresh_that_never_reached_the_server_is_simply_retried(sandbox, state):
    granted(sandbox, state)
    sandbox.add_fault(Fault(method="POST", path=TOKEN_PATH, drop="before"))
    sandbox.add_fault(Fault(method="POST", path=TOKEN_PATH, status=503))
    provider = TokenProvider(credentials(sandbox, state))
    # dropped before handling: the same token is presented again, and works
    assert sandbox.oauth.accepts(provider.bearer())
    assert sandbox.oauth.stats().reused == 0


def test_a_token_endpoint_that_keeps_failing_is_retryable_and_keeps_the_token(sandbox, state):
    first = granted(sandbox, state)
    sandbox.add_fault(Fault(method="POST", path=TOKEN_PATH, status=503, times=10))
    with pytest.raises(AuthUnavailable, match="stored refresh token is unchanged"):
        TokenProvider(credentials(sandbox, state)).bearer()
    stored = RefreshTokens(state, "acme", SecretStr(KEY)).read()
    assert stored is not None and stored.token.get_secret_value() == first


def test_form_client_authentication(sandbox, state):
    granted(sandbox, state)
    provider = TokenProvider(credentials(sandbox, state, client_auth="form"))
    assert sandbox.oauth.accepts(provider.bearer())


def test_a_refused_client_does_not_condemn_the_refresh_token(sandbox, state):
    granted(sandbox, state)
    with pytest.raises(AuthFailed, match="refused the client .*client_secret"):
        TokenProvider(credentials(sandbox, state, secret="wrong")).bearer()
    stored = RefreshTokens(state, "acme", SecretStr(KEY)).read()
    assert stored is not None and stored.rejected is None
    assert sandbox.oauth.accepts(TokenProvider(credentials(sandbox, state)).bearer())


def test_a_changed_key_is_named(sandbox, state):
    granted(sandbox, state)
    with pytest.raises(AuthFailed, match="does not decrypt with lightspeed.auth.encryption_key"):
        TokenProvider(credentials(sandbox, state, key=new_key())).bearer()


def test_nothing_stored_names_the_fix(sandbox, state):
    with pytest.raises(AuthFailed, match="no refresh token is stored .*inventory-sync auth"):
        TokenProvider(credentials(sandbox, state)).bearer()


def test_accounts_have_their_own_tokens(sandbox, state):
    granted(sandbox, state, "acme")
    granted(sandbox, state, "globex")
    for account in ("acme", "globex"):
        assert sandbox.oauth.accepts(
            TokenProvider(credentials(sandbox, state, account=account)).bearer()
        )
    assert sandbox.oauth.stats().reused == 0


@pytest.mark.parametrize(
    ("body", "lifetime", "rotated"),
    [
        ({"access_token": "a", "expires_in": 10, "refresh_token": "r"}, 10.0, True),
        ({"access_token": "a", "refresh_token": "r"}, DEFAULT_EXPIRES_IN, True),
        ({"access_token": "a", "expires_in": "600"}, 600.0, False),
        ({"access_token": "a", "expires_in": 0}, DEFAULT_EXPIRES_IN, False),
        ({"access_token": "a", "expires_in": True}, DEFAULT_EXPIRES_IN, False),
    ],
)
def test_expires_in_when_present_else_fifteen_minutes(body, lifetime, rotated):
    issued = issued_from(body)
    assert issued.expires_in == lifetime
    assert (issued.refresh_token is not None) == rotated


def test_an_answer_without_an_access_token_is_retryable():
    with pytest.raises(AuthUnavailable):
        issued_from({"token_type": "Bearer"})


def test_the_raw_database_row_holds_ciphertext(sandbox, state):
    token = granted(sandbox, state)
    with sqlite3.connect(state.sqlite_path) as db:
        (stored,) = db.execute("SELECT token FROM refresh_tokens").fetchone()
    assert token.encode() not in stored


TAKE_TURNS = """
import sys
from pydantic import SecretStr
from tasks.config.settings import OAuthAuth
from tasks.lightspeed.auth import OAuthCredentials, TokenProvider
from tasks.state.location import StateLocation

token_url, state_url, key, rounds = sys.argv[1:5]
auth = OAuthAuth.model_validate({
    "kind": "oauth", "token_url": token_url, "client_id": "sandbox-client",
    "client_secret": {"env": "X"}, "encryption_key": {"env": "Y"},
})
state = StateLocation(state_url, "brand")
credentials = OAuthCredentials(
    auth, "acme", SecretStr("sandbox-client-secret"), SecretStr(key), state, "sync.toml", 5.0
)
provider = TokenProvider(credentials)
for _ in range(int(rounds)):
    provider.renewed(provider.bearer())  # a refresh every time: as if every token got a 401
print(provider.counts().refreshes)
"""


def take_turns(sandbox: SandboxServer, state: StateLocation, processes: int, rounds: int) -> int:
    """Processes refreshing one account's token as fast as they can; their refreshes in all."""
    import subprocess
    import sys

    command = [sys.executable, "-c", TAKE_TURNS, sandbox.url + TOKEN_PATH, state.url, KEY]
    children = [
        subprocess.Popen([*command, str(rounds)], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    outputs = [child.communicate(timeout=300)[0] for child in children]
    assert [child.returncode for child in children] == [0] * processes
    return sum(int(out.strip()) for out in outputs)


@pytest.mark.slow
def test_processes_on_sqlite_never_present_a_token_twice(sandbox, state):
    granted(sandbox, state)
    refreshes = take_turns(sandbox, state, processes=4, rounds=15)
    stats = sandbox.oauth.stats()
    assert (stats.reused, stats.rejected) == (0, 0)
    assert refreshes == stats.refreshes == 4 * (15 + 1)


@pytest.mark.slow
def test_processes_on_postgresql_never_present_a_token_twice(sandbox, postgres):
    state = StateLocation(postgres.create_database("auth_turns"), "brand")
    granted(sandbox, state)
    refreshes = take_turns(sandbox, state, processes=4, rounds=15)
    stats = sandbox.oauth.stats()
    assert (stats.reused, stats.rejected) == (0, 0)
    assert refreshes == stats.refreshes == 4 * (15 + 1)
    stored = RefreshTokens(state, "acme", SecretStr(KEY)).read()
    assert stored is not None and stored.generation == stats.refreshes + 1


OAUTH_TOML = """
[lightspeed]
base_url = "https://api.example.test"
{extra}
[lightspeed.auth]
kind = "oauth"
client_id = "key"
client_secret = {{ env = "LS_SECRET" }}
encryption_key = {{ secret = "token-key" }}
{auth}
[[warehouses]]
name = "east"
kind = "csv"
path = "east.csv"
sku_column = "sku"
quantity_column = "qty"
"""


def settings_of(tmp_path: Path, extra: str = "", auth: str = "") -> LightspeedSettings:
    from tasks.config.settings import load_settings

    path = tmp_path / "sync.toml"
    path.write_text(OAUTH_TOML.format(extra=extra, auth=auth))
    return load_settings(path, environ={}).lightspeed


def test_oauth_settings_default_to_the_documented_endpoint_and_basic_auth(tmp_path):
    auth = settings_of(tmp_path).auth
    assert isinstance(auth, OAuthAuth)
    assert auth.token_url == "https://accounts.lightspeed.app/oauth/token"
    assert auth.client_auth == "basic" and auth.refresh_margin_seconds == 60


def test_static_is_still_the_default(tmp_path):
    from tasks.config.settings import StaticAuth

    assert LightspeedSettings(base_url="https://x").auth == StaticAuth()


@pytest.mark.parametrize(
    ("extra", "auth", "problem"),
    [
        ('token_secret = "block"', "", "token_secret is for auth kind"),
        ("", 'client_auth = "header"', "client_auth"),
        ("", 'token_url = "ftp://x"', "must start with http"),
    ],
)
def test_bad_oauth_settings_are_named(tmp_path, extra, auth, problem):
    from tasks.config.errors import ConfigError

    with pytest.raises(ConfigError, match=problem):
        settings_of(tmp_path, extra, auth)


def test_a_secret_written_inline_is_refused(tmp_path):
    from tasks.config.errors import ConfigError

    path = tmp_path / "sync.toml"
    path.write_text(
        OAUTH_TOML.format(extra="", auth="").replace('{ env = "LS_SECRET" }', '"hunter2"')
    )
    from tasks.config.settings import load_settings

    with pytest.raises(ConfigError, match="never written in the file") as refused:
        load_settings(path, environ={})
    assert "hunter2" not in str(refused.value)


def test_the_sandbox_token_endpoint_over_http(sandbox):
    from builders import TOKEN

    sandbox.reset([product("A")])
    control = sandbox.url + "/_sandbox/oauth"
    assert (
        httpx.post(control, json={"access_token_seconds": 30}).json()["access_token_seconds"] == 30
    )
    first = httpx.post(control + "/grant").json()["refresh_token"]
    basic = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
    form = {"grant_type": "refresh_token", "refresh_token": first}

    answer = httpx.post(sandbox.url + TOKEN_PATH, data=form, auth=basic)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 30
    assert body["refresh_token"] != first
    for bearer in (body["access_token"], TOKEN):  # issued tokens and the static one both work
        got = httpx.get(sandbox.url + "/products", headers={"Authorization": f"Bearer {bearer}"})
        assert got.status_code == 200

    again = httpx.post(sandbox.url + TOKEN_PATH, data=form, auth=basic)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    by_form = form | {"refresh_token": body["refresh_token"], "client_id": DEFAULT_CLIENT_ID}
    wrong = httpx.post(sandbox.url + TOKEN_PATH, data=by_form | {"client_secret": "nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    right = httpx.post(
        sandbox.url + TOKEN_PATH, data=by_form | {"client_secret": DEFAULT_CLIENT_SECRET}
    )
    assert right.status_code == 200

    assert httpx.post(control + "/revoke").status_code == 200
    headers = {"Authorization": f"Bearer {right.json()['access_token']}"}
    assert httpx.get(sandbox.url + "/products", headers=headers).status_code == 401
    stats = httpx.get(control).json()
    assert (stats["refreshes"], stats["reused"], stats["grants"], stats["revocations"]) == (
        2,
        1,
        1,
        1,
    )
    assert httpx.post(control, json={"access_token_seconds": 0}).status_code == 400
