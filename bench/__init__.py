"""Benchmarks: they print figures and write reports; they never assert times."""
