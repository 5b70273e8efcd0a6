"""The exit statuses of every command, which a cron wrapper or a monitor can tell apart."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3
