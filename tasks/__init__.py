"""What a run does: a package or module per stage, most ending in its @task, and their plumbing."""
