"""`python -m devstack`, which `inventory-sync-dev` runs from a checkout."""

from devstack.cli import app

app(prog_name="inventory-sync-dev")
