# The two commands of the README. Both set everything up first (idempotent).
.PHONY: setup demo test test-fast lint bench constraints

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/dataeff demo

lint: setup
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .
	.venv/bin/mypy

test: setup lint
	.venv/bin/python -m pytest -q --durations=15

test-fast: setup lint
	.venv/bin/python -m pytest -q -m "not slow"

bench: setup
	.venv/bin/python -m benchmarks

# Re-pin every package after a deliberate upgrade (then run make test).
constraints:
	(echo "# Every package of the tested set-up, pinned (pip freeze --exclude-editable of .venv; refresh with make constraints)."; \
	 echo "# scripts/setup.sh installs with -c constraints.txt, so a fresh machine gets exactly what CI tested."; \
	 .venv/bin/pip freeze --exclude-editable) > constraints.txt
