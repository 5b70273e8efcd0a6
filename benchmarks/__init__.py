"""Benchmarks at supplier scale: `make bench` runs them all and rewrites docs/benchmarks.md."""
