"""Benchmarks for steering methods: harness and offline metrics."""
