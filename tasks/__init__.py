"""What a run does, one package or module per stage, each ending in its Prefect task."""
