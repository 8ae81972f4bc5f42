"""Shared fixtures. Service fixtures live in their own plugin modules listed below.

Tests that start a server or load the real model are marked ``slow`` here, by the fixtures they
use, so ``make test-fast`` (``pytest -m "not slow"``) runs the pure tests in seconds; CI runs all.
"""

from __future__ import annotations

import os

import pytest

from flows.runtime_env import configure_runtime  # before anything imports prefect

configure_runtime()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "fixtures_models",
    "fixtures_label_studio",
    "fixtures_mlflow",
    "fixtures_prefect",
    "fixtures_projects",
]

SLOW_FIXTURES = frozenset(
    {
        "label_studio",
        "ls_client",
        "ls_project",  # a Label Studio server
        "mlflow_sqlite_uri",
        "mlflow_postgres_db",
        "mlflow_server_uri",
        "mlflow_server",  # MLflow stores/servers
        "prefect_harness",
        "prefect_api_url",
        "prefect_server",  # Prefect APIs
        "make_project",
        "flow_project",  # all of the above
        "smollm2",  # the real model
    }
)


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
