"""MLflow fixtures: a temporary SQLite store and a real ``mlflow server`` on Postgres.

- ``mlflow_sqlite_uri``: ``sqlite:///<tmp>/mlflow.db`` (session scoped; tests isolate themselves
  with unique project names).
- ``mlflow_server_uri``: ``http://127.0.0.1:<port>`` of ``mlflow server`` started from this
  virtualenv with ``--backend-store-uri postgresql://<user>@127.0.0.1:5432/<fresh database>`` and
  ``--artifacts-destination <tmp>`` (artifacts proxied by the server). The database is created for
  the test session and dropped at the end; the server is stopped at the end. Any start-up failure
  fails the test loudly with the server's log.

Environment: ``DATAEFF_TEST_PG`` overrides the Postgres server DSN
(default ``postgresql://postgres@127.0.0.1:5432/postgres``, trust auth).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
import requests

PG_ADMIN_DSN = os.environ.get("DATAEFF_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVER_START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_database(dsn: str, database: str) -> str:
    """The SQLAlchemy URI of ``database`` on the server of ``dsn``, with the psycopg2 driver named
    (SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed)."""
    parts = urlparse(dsn)
    return urlunparse(parts._replace(scheme="postgresql+psycopg2", path=f"/{database}"))


def _admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_DSN)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def mlflow_sqlite_uri(tmp_path_factory) -> str:
    """``sqlite:///`` URI of a fresh MLflow database in a temporary folder."""
    folder = tmp_path_factory.mktemp("mlflow-sqlite")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="session")
def mlflow_postgres_db():
    """A fresh Postgres database for the session, dropped at the end; yields its DSN."""
    name = f"dataeff_mlflow_{uuid.uuid4().hex[:10]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - fail loudly with the cause
        pytest.fail(
            f"cannot create Postgres database at {PG_ADMIN_DSN} ({exc}); is Postgres running? set DATAEFF_TEST_PG"
        )
    yield _with_database(PG_ADMIN_DSN, name)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class MlflowServer:
    """A real ``mlflow server`` subprocess that can be stopped and started again on the same port (outage tests).

    Args:
        backend_store_uri: ``sqlite:///...`` or ``postgresql+psycopg2://...``.
        folder: working folder (artifacts under ``artifacts/``, log in ``server.log``).
    """

    def __init__(self, backend_store_uri: str, folder: Path):
        self.backend_store_uri = backend_store_uri
        self.folder = folder
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        if not mlflow_bin.exists():
            pytest.fail(f"{mlflow_bin} not found: install mlflow into the test virtualenv")
        artifacts = self.folder / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # The job runner (7 huey consumers for GenAI scorers) is not needed and made every request
        # ~10x slower on 2 cores (236 ms -> 26 ms per request when off).
        env = dict(
            os.environ, MLFLOW_ENABLE_TELEMETRY="false", DO_NOT_TRACK="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.folder
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                self._fail(f"mlflow server exited with code {self.proc.returncode}", cmd)
            try:
                if requests.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return self.uri
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                self._fail(f"mlflow server did not answer /health within {SERVER_START_TIMEOUT_S} s", cmd)
            time.sleep(0.5)

    def _fail(self, why: str, cmd: list[str]) -> None:
        tail = self.log_path.read_text(errors="replace")[-4000:]
        pytest.fail(f"{why}\ncommand: {' '.join(cmd)}\n--- server log ---\n{tail}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@pytest.fixture(scope="session")
def mlflow_server_uri(mlflow_postgres_db, tmp_path_factory):
    """``http://127.0.0.1:<port>`` of a real ``mlflow server`` on Postgres with proxied artifacts."""
    server = MlflowServer(mlflow_postgres_db, tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server.start()
    finally:
        server.stop()


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's process group (the server and its uvicorn workers)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
