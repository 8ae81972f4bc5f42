# The two commands of the README. Both set everything up first (idempotent).
.PHONY: setup demo test test-fast lint bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/dataeff demo

lint: setup
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .
	.venv/bin/mypy

test: setup lint
	.venv/bin/python -m pytest -q

test-fast: setup lint
	.venv/bin/python -m pytest -q -m "not slow"

bench: setup
	.venv/bin/python -m benchmarks
