"""Benchmarks that write tables to benchmarks/results/, run from the pack's folder as modules:
`python -m benchmarks.<name>` (the Makefile's targets do that)."""
