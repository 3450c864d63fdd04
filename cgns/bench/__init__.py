"""Benchmarks: `python -m cgns.bench` prints one table."""
