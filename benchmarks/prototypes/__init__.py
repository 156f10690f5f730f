"""Measurement prototypes that docs/benchmarks.md compares against; nothing in the project imports them."""
