"""Benchmarks: each module prints its numbers and writes a CSV under results/bench/ (`python -m bench.<name>`)."""
