"""One API account's requests in flight, capped across every run on it: a Prefect global concurrency limit.

The platform's rate limit is per account and shared by every integration on it, so runs of
several suppliers (or both deployments of one) on one account share one budget. Each request
holds one slot of the limit `lightspeed-account-<account>` for as long as it is in flight.
A slot is a lease: a run killed mid-request gives its slot back when the lease runs out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from tasks.config.settings import LightspeedSettings, account_name
from tasks.http.read_retries import run_warning

LEASE_SECONDS = 60  # Prefect's shortest lease: a killed run's slots return within about a minute
SLOT_TIMEOUT_SECONDS = 600.0


class AccountLimitMissing(Exception):
    """The account's limit does not exist on the server; the message says how to create it."""


class SlotUnavailable(Exception):
    """No slot now: none came free in time, or the Prefect server did not answer. Worth a retry."""


def limit_name(account: str) -> str:
    """The Prefect global concurrency limit of one API account."""
    return f"lightspeed-account-{account}"


@contextmanager
def request_slot(settings: LightspeedSettings) -> Iterator[None]:
    """Hold one of the account's slots while the block runs (no limit configured: at once)."""
    if settings.account_limit is None:
        yield
        return
    from prefect.concurrency.asyncio import (
        AcquireConcurrencySlotTimeoutError,
        ConcurrencySlotAcquisitionError,
    )
    from prefect.concurrency.sync import concurrency

    name = limit_name(account_name(settings))
    held = ExitStack()
    try:
        held.enter_context(
            concurrency(
                name,
                occupy=1,
                timeout_seconds=SLOT_TIMEOUT_SECONDS,
                lease_duration=LEASE_SECONDS,
                strict=True,
            )
        )
    except AcquireConcurrencySlotTimeoutError:
        raise SlotUnavailable(f"no free slot in {name} for {SLOT_TIMEOUT_SECONDS:.0f} s") from None
    except ConcurrencySlotAcquisitionError as exc:
        if "must be created" not in str(exc):  # the server failed to answer: transient
            cause = exc.__cause__ or exc
            raise SlotUnavailable(f"{exc} ({type(cause).__name__}: {cause})") from None
        raise AccountLimitMissing(
            f"{exc}: run `inventory-sync deploy --configs`, or create it with "
            f"`prefect gcl create {name} --limit {settings.account_limit}`"
        ) from None
    try:
        yield
    finally:
        try:
            held.close()
        except Exception as exc:  # the request is over either way; the lease runs out
            run_warning(f"{name}: could not give a slot back ({exc}); its lease ends in 60 s")


def ensure_account_limit(settings: LightspeedSettings) -> str:
    """Create the account's limit if it is missing; say what it is. Differences are left alone.

    `inventory-sync deploy` sets every account's limit from the configurations; a run only
    makes sure one exists, so a first run from the CLI is limited too.
    """
    if settings.account_limit is None:
        return ""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = limit_name(account_name(settings))
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=settings.account_limit)
                )
            except ObjectAlreadyExists:  # another run created it meanwhile
                found = client.read_global_concurrency_limit_by_name(name)
            else:
                return f"{name}: created with limit {settings.account_limit}"
    if found.limit != settings.account_limit:
        return (
            f"{name}: the server's limit is {found.limit}, this configuration says "
            f"{settings.account_limit}; the server's holds (`inventory-sync deploy` sets it)"
        )
    return f"{name}: limit {found.limit}"
