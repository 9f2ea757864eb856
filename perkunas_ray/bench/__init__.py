"""Benchmarks: each module registers one `perkunas bench NAME` and prints a table plus one JSON line."""
