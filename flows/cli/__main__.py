"""`python -m flows.cli`: the same as the `inventory-sync` command."""

from flows.cli.app import main

main()
