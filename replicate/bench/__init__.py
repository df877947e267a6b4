"""Benchmarks (``replicate bench ...``): speed and memory are measured here, never in timed tests."""
