"""Prefect fixture: one real temporary Prefect API (the test harness) per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.logging.configuration import setup_logging
    from prefect.testing.utilities import prefect_test_harness

    # Prefect configures logging (replacing the root logger's handlers) at its first flow run; done
    # here, once, so pytest's per-test log capture (caplog) is installed after it and sees run logs.
    setup_logging()
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """API URL of the harness's server, for subprocesses (e.g. ``dataeff loop``) that must share it."""
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer._instances[None].api_url
