"""Benchmarks: figures come from here, never from timed assertions in tests."""
