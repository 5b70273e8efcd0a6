"""What the sync remembers between runs, per tenant, in SQLite (embedded) or PostgreSQL (shared)."""
