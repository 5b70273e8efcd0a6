"""The soak's Prefect server: `prefect server start`'s own app, its vacuum's clock run ahead.

Prefect refuses a flow-run retention under an hour, and a soak lasts minutes. So the soak sets the
retention to an hour and a second, and this process runs the vacuum's clock (only the vacuum's:
`prefect.server.services.db_vacuum.now`) ahead by that less the soak's window: the vacuum deletes
what ended more than the window ago, with Prefect's own queries. Everything else is the server
as `prefect server start` runs it, on SQLite under PREFECT_HOME.

Usage: python -m benchmarks.soak_server PORT  (with SOAK_VACUUM_AHEAD_SECONDS in the environment)
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta

AHEAD_ENV = "SOAK_VACUUM_AHEAD_SECONDS"


def main(argv: list[str]) -> None:
    import uvicorn
    from prefect.server.services import db_vacuum

    ahead = timedelta(seconds=float(os.environ[AHEAD_ENV]))
    real_now = db_vacuum.now

    def vacuum_now(tz: str = "UTC") -> datetime:
        return real_now(tz) + ahead

    db_vacuum.now = vacuum_now  # type: ignore[assignment]

    from prefect.server.api.server import create_app

    uvicorn.run(create_app(final=True), host="127.0.0.1", port=int(argv[0]), log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
