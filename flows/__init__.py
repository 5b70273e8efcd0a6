"""What starts, schedules or hosts a run: the flow, the CLI, the watcher, the server set-up."""
