"""Benchmarks that print numbers (never tests): training and inference throughput (throughput.py)."""
