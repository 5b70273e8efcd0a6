"""What a run reports: the summary, its artifacts and files, and the live progress."""
