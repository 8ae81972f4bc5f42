# The two commands of the README. Both set everything up first (idempotent).
.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/dataeff demo

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python -m benchmarks
