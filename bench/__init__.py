"""Benchmarks that print ratios measured side by side (issue #10); ``python -m bench`` runs all.

Not part of the test suite: nothing here asserts a time. ``tests/test_bench_smoke.py`` only
checks that a tiny run (``--smoke``) produces a table with every item.
"""
