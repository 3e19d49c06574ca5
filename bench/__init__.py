"""The benchmark regression suite (run with `pytest bench`; see bench/README.md)."""
