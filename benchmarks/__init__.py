"""Speed/memory benchmarks of dataeff against naive reference algorithms (``python -m benchmarks``)."""
