"""The flows (sync.py) and the command that runs them (cli.py)."""

import os

if os.environ.get("PREFECT__FLOW_RUN_ID"):
    # A worker's flow-run process about to import the flow. Deployments made by `inventory-sync
    # deploy` started the validation side process already (flows/flow_run_process.py), and this
    # does nothing; one deployed by hand with Prefect's own command starts it here, ~2 s later.
    from tasks.checks.suites import preload

    preload()
