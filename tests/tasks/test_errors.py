"""Expected failures are logged as their message; a bug keeps its traceback."""

from __future__ import annotations

import io
import logging

import pytest

from tasks.config.errors import ConfigError
from tasks.errors import SyncError, TracebackFreeSyncErrors
from tasks.guards import ChangesNotApproved, StaleFeeds
from tasks.lightspeed.catalog import CatalogError
from tasks.lightspeed.client import FatalError, RetryableError, Unauthorized
from tasks.sources.extract import ExtractFailed
from tasks.sources.feed import WarehouseUnavailable, WarehouseUnreadable
from tasks.state.lock import StateBusy

pytestmark = pytest.mark.fast


@pytest.fixture
def logged() -> tuple[logging.Logger, io.StringIO]:
    """A logger with the filter, writing formatted records (tracebacks too) to a buffer."""
    logger = logging.getLogger("test.sync_errors")
    logger.handlers.clear()
    logger.filters.clear()
    logger.propagate = False
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.addFilter(TracebackFreeSyncErrors())
    return logger, buffer


def log_failure(logger: logging.Logger, error: Exception, message: str) -> None:
    """Log as Prefect's engines do: the repr in the message, the traceback as exc_info."""
    try:
        raise error
    except Exception as exc:
        logger.error(message, *([exc] if "%r" in message else []), exc_info=True)


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("lightspeed.base_url: Field required"),
        WarehouseUnreadable("east", "no file matches feeds/east-*.csv"),
        WarehouseUnavailable("wms", "GET /stock: HTTP 503"),
        ExtractFailed("1 of 1 warehouse(s) could not be read; nothing was sent"),
        StaleFeeds("1 warehouse(s) without a usable feed; nothing was sent"),
        ChangesNotApproved("the change guard tripped and the run was rejected"),
        StateBusy("state /x is in use by run a"),
        RetryableError("PUT /inventory: HTTP 503 busy", status=503),
        Unauthorized("GET /products: HTTP 401 bad token (check the token)", status=401),
        FatalError("GET /products: HTTP 404 not found", status=404),
        CatalogError("catalog file c.csv: not found"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_expected_failure_is_a_sync_error_logged_as_its_message(logged, error):
    logger, buffer = logged
    assert isinstance(error, SyncError)
    log_failure(logger, error, "Task run failed with exception: %r - Retries are exhausted")
    assert buffer.getvalue() == (
        f"ERROR Task run failed with exception: {error} - Retries are exhausted\n"
    )


def test_a_bug_keeps_its_traceback(logged):
    logger, buffer = logged
    log_failure(logger, KeyError("vendorSku"), "Encountered exception during execution: %r")
    text = buffer.getvalue()
    assert text.startswith("ERROR Encountered exception during execution: KeyError('vendorSku')")
    assert "Traceback (most recent call last)" in text and "KeyError: 'vendorSku'" in text


def test_the_same_error_logged_again_by_the_same_logger_is_dropped(logged):
    """A deployment run's engine re-raises what the flow already logged."""
    logger, buffer = logged
    error = ExtractFailed("1 of 1 warehouse(s) could not be read")
    log_failure(logger, error, "Encountered exception during execution: %r")
    log_failure(logger, error, "Engine execution exited with unexpected exception")
    assert buffer.getvalue() == (
        "ERROR Encountered exception during execution: 1 of 1 warehouse(s) could not be read\n"
    )


def test_a_message_without_the_repr_becomes_the_error_itself(logged):
    logger, buffer = logged
    log_failure(logger, StaleFeeds("feed east.csv is 3.0h old"), "Engine execution exited")
    assert buffer.getvalue() == "ERROR feed east.csv is 3.0h old\n"
