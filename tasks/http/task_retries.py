"""Prefect task retries: the layer for a call retried whole (a PUT chunk), not a read's pages."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff


def retry_options(
    retries: int, backoff_seconds: float, retryable: type[BaseException]
) -> dict[str, Any]:
    """Task options: exponential backoff with ±50 % jitter, retrying only `retryable` errors."""

    def only_retryable(task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except retryable:
            return True
        except BaseException:
            return False
        return False

    only_retryable.__name__ = f"retry_only_{retryable.__name__}"
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=backoff_seconds)
        if backoff_seconds > 0
        else 0,
        "retry_jitter_factor": 0.5 if backoff_seconds > 0 else None,
        "retry_condition_fn": only_retryable,
    }
