"""Benchmarks of spanbert-fast: each op and the whole training step against baselines."""
