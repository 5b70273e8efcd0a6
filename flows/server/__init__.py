"""Setting up a Prefect server for the sync: work pool, deployments, automations, suppliers."""
