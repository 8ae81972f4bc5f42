"""Prefect fixtures: one real temporary Prefect API (the test harness) per test session, and a real
``prefect server start`` for tests that need a scheduler or another database."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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


@contextlib.contextmanager
def prefect_server(home: Path, database: str | None = None, **settings: str) -> Iterator[tuple[str, Path]]:
    """A real ``prefect server start`` on a free local port, in its own process group; yields its API URL
    and log file, and stops the whole group at the end.

    Args:
        home: ``PREFECT_HOME`` of the server (its SQLite database unless ``database`` is given); the log
            file is ``home / "prefect-server.log"``.
        database: ``postgresql://`` DSN of a Postgres database for the server (Prefect's asyncpg driver).
        **settings: extra ``PREFECT_*`` environment variables.
    """
    import requests
    from fixtures_mlflow import _free_port, _stop

    home.mkdir(parents=True, exist_ok=True)
    if database is not None:
        settings["PREFECT_API_DATABASE_CONNECTION_URL"] = database.replace("postgresql://", "postgresql+asyncpg://", 1)
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false", **settings}
    env.pop("PREFECT_API_URL", None)
    log_path = home / "prefect-server.log"
    prefect = str(Path(sys.executable).with_name("prefect"))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url, log_path
    finally:
        _stop(proc)


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A fresh database ``<prefix>_<random>`` on the local Postgres; yields its DSN, drops it at the end."""
    import uuid

    from fixtures_mlflow import PG_ADMIN_DSN, _admin

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
