"""Read quantities back from the API and report products that did not stick (drift)."""

from __future__ import annotations

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from tasks.config.settings import LightspeedSettings
from tasks.lightspeed.client import LightspeedClient, retry_policy
from tasks.lightspeed.load import LoadOutcome
from tasks.state import StateStore

DRIFT_SCHEMA = {"id": pl.String, "vendorSku": pl.String, "pushed": pl.Int64, "platform": pl.Int64}


def find_drift(landed: pl.DataFrame, platform: dict[str, int | None]) -> pl.DataFrame:
    """Products whose platform quantity differs from what this run pushed (or that vanished)."""
    read = pl.DataFrame(
        {"id": list(platform), "platform": list(platform.values())},
        schema={"id": pl.String, "platform": pl.Int64},
    )
    return (
        landed.select("id", "vendorSku", pl.col("quantity").alias("pushed"))
        .join(read, on="id", how="left")
        .filter(pl.col("platform").is_null() | (pl.col("platform") != pl.col("pushed")))
        .select(list(DRIFT_SCHEMA))
    )


def read_back(
    sent: pl.DataFrame,
    outcome: LoadOutcome,
    settings: LightspeedSettings,
    token: SecretStr,
    store: StateStore,
) -> pl.DataFrame | str | None:
    """Read back what landed; forget drifted products in the state so the next run resends them.

    Returns the drift, nothing if nothing landed, or why the read-back itself failed: the
    updates did land, so a failed check is reported, not turned into a failed run.
    """
    landed = sent.filter(~pl.col("id").is_in(list(outcome.not_landed_ids)))
    if landed.height == 0:
        return None
    state = read_back_task.with_options(**retry_policy(settings))(
        landed, settings, token, return_state=True
    )
    drift = state.result(raise_on_failure=False)
    if not isinstance(drift, pl.DataFrame):
        return f"read-back failed, drift not checked this run: {drift}"
    store.forget(drift["id"])
    return drift


@task(name="read-back", cache_policy=NO_CACHE)
def read_back_task(
    landed: pl.DataFrame, settings: LightspeedSettings, token: SecretStr
) -> pl.DataFrame:
    """GET every product again and compare with what landed this run."""
    client = LightspeedClient(settings, token)
    try:
        platform = {
            str(p.get("id")): (p.get("quantity") if type(p.get("quantity")) is int else None)
            for p in client.iter_products()
        }
    finally:
        client.close()
    drift = find_drift(landed, platform)
    logger = get_run_logger()
    if drift.height:
        logger.warning(
            "%d product(s) drifted after the load; the next run re-sends them", drift.height
        )
    else:
        logger.info("read back %d product(s): all hold what was pushed", landed.height)
    return drift
