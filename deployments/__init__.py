"""What Prefect needs to schedule and run the sync: deployments, automations, images (data)."""
