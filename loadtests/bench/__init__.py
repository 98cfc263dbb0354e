"""Benchmarks against the peers (`make bench`); each script runs on its own and writes JSON."""
