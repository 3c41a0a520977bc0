"""`make bench`: speed and memory figures with a same-run baseline (see docs/benchmarks.md)."""
