"""Benchmarks of the input pipelines and training; each writes self-describing JSON rows."""
