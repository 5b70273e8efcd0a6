"""A worker's flow-run process: the validation side process first, then Prefect's engine.

The process work pool's job runs `python -m flows.flow_run_process` instead of Prefect's
`python -m prefect.engine` (deployments/prefect.yaml sets the command). The only difference is
the first line below: Great Expectations starts importing on the other core ~2 s earlier,
before Prefect's own import, so a small run no longer waits for it (see
tasks/checks/validation_process.py). Everything else is prefect.engine's `__main__`, unchanged.
"""

import runpy

from tasks.checks.suites import preload

if __name__ == "__main__":
    preload()
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
