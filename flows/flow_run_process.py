"""A worker's flow-run process: the validation side process first, then Prefect's engine.

The process work pool's job runs `python -m flows.flow_run_process` instead of Prefect's
`python -m prefect.engine` (deployments/prefect.yaml sets the command). The only difference is
the first line below: the process is prepared (flows/process.py), and Great Expectations
starts importing on the other core before Prefect's own import, so a small run does not wait
for it (see tasks/checks/validation_process.py). Everything else is prefect.engine's `__main__`, unchanged.
"""

import runpy

from flows.process import prepare_process

if __name__ == "__main__":
    prepare_process(preload_validation=True)
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
