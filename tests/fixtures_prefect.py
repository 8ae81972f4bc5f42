"""Prefect fixture: one real temporary Prefect API (the test harness) per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """API URL of the harness's server, for subprocesses (e.g. ``dataeff loop``) that must share it."""
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer._instances[None].api_url
