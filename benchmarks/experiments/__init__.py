"""Experiments whose runs benchmarks/RESULTS.md records: scripts to rerun them, not package code."""
