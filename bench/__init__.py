"""Benchmarks (`make bench`, `python -m bench`): they measure and report to docs/benchmarks.md;
nothing here asserts a time, and nothing here runs with the tests."""
