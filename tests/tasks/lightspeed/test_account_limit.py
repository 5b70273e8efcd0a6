"""An API account's requests in flight, capped across runs by a Prefect global concurrency limit."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.config.settings import LightspeedSettings
from tasks.lightspeed.account_limit import (
    AccountLimitMissing,
    ensure_account_limit,
    limit_name,
    request_slot,
)

pytestmark = pytest.mark.usefixtures("prefect_api")


def settings(account: str, limit: int | None) -> LightspeedSettings:
    return LightspeedSettings(base_url="https://x", account=account, account_limit=limit)


def test_requests_beyond_the_accounts_limit_wait_for_a_slot():
    account = settings("limited-two", 2)
    assert ensure_account_limit(account) == "lightspeed-account-limited-two: created with limit 2"
    inside, most, lock = 0, 0, threading.Lock()

    def request(_: int) -> None:
        nonlocal inside, most
        with request_slot(account):
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.3)
            with lock:
                inside -= 1

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(request, range(6)))
    assert most == 2


def test_no_limit_configured_asks_nothing_of_the_server():
    with request_slot(settings("anything", None)):
        pass
    assert ensure_account_limit(settings("anything", None)) == ""


def test_a_missing_limit_is_named_and_a_run_creates_it():
    account = settings("created-by-a-run", 3)
    with pytest.raises(AccountLimitMissing) as missing, request_slot(account):
        pytest.fail("a slot of a limit that does not exist")
    assert "prefect gcl create lightspeed-account-created-by-a-run --limit 3" in str(missing.value)
    assert ensure_account_limit(account).endswith("created with limit 3")
    assert ensure_account_limit(account) == f"{limit_name('created-by-a-run')}: limit 3"
    other = ensure_account_limit(settings("created-by-a-run", 5))
    assert "the server's limit is 3, this configuration says 5; the server's holds" in other
    with request_slot(account):
        pass
