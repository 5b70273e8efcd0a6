"""The flows (sync.py) and the command that runs them (cli.py)."""

import os

if os.environ.get("PREFECT__FLOW_RUN_ID"):
    # A worker's flow-run process, about to import the flow: start Great Expectations' import
    # (~3 s) now, in the background, so it overlaps the flow's own imports and Prefect's
    # start-up instead of following them (about 1-2 s of every deployment run's latency).
    from tasks.checks.suites import preload

    preload()
