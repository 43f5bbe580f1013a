"""Benchmarks and load scripts: `python -m bench <scenario>`. Loopback only."""
