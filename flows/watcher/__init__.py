"""Feed arrivals: the watcher that turns new warehouse feeds into Prefect events."""
