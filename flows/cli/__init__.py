"""The `inventory-sync` command: `app.py` wires one module per subcommand."""
