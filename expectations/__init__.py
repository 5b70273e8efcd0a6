"""The Great Expectations suites, as JSON data: loaded by tasks/checks/gx.py."""
