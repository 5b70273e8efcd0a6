"""HTTP plumbing every client shares: verdicts on responses, per-request read retries, task retries."""
