"""The demo's local MLflow UI (``mlflow ui`` on a SQLite store), started so that it stays up.

``mlflow ui`` runs the store's schema migrations when it starts. If another process creates the
same SQLite file at that moment (the demo's first tracking call), both migrate at once and the UI
dies with an ``AttributeError`` in an alembic step, while the demo goes on printing a link that
does not work. So the schema is created here first, in this process, and the UI is only handed a
store that is already current; :meth:`MlflowUI.ensure` restarts it if it is gone.

Links open an experiment on its runs: MLflow 3's UI takes the experiment's type from its workflow
switch (the ``workflowType`` URL parameter, else a per-browser setting whose default is GenAI), not
from the experiment's ``mlflow.experimentKind`` tag, so a bare link lands on the empty GenAI
"Overview / Traces" page; :func:`experiment_link` names the machine-learning workflow and the runs tab.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

#: The MLflow UI's workflow for model training (its other value, ``genai``, is the default).
WORKFLOW_MACHINE_LEARNING = "machine_learning"


def experiment_link(base_url: str, experiment_id: str | None) -> str:
    """URL of an experiment's runs in the MLflow UI at ``base_url`` in the machine-learning workflow
    (the experiment list when ``experiment_id`` is ``None``)."""
    base = base_url.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?workflowType={WORKFLOW_MACHINE_LEARNING}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType={WORKFLOW_MACHINE_LEARNING}"


class MlflowUI:
    """``mlflow ui`` for ``sqlite:///<directory>/mlflow.db`` on ``127.0.0.1:<port>``.

    Args:
        directory: folder of the store (``mlflow.db``) and of the UI's log (``mlflow-ui.log``).
        port: TCP port (default 5000).
    """

    def __init__(self, directory: Path, port: int = 5000) -> None:
        self.directory = Path(directory)
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def store_uri(self) -> str:
        return f"sqlite:///{self.directory / 'mlflow.db'}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "mlflow-ui.log"

    def experiment_url(self, name: str) -> str:
        """Link to experiment ``name``'s runs (:func:`experiment_link`; the experiment list if there is none)."""
        exp = MlflowClient(self.store_uri).get_experiment_by_name(name)
        return experiment_link(self.url, exp.experiment_id if exp is not None else None)

    def start(self) -> MlflowUI:
        """Create (or migrate) the store here, then start the UI in the background."""
        self.directory.mkdir(parents=True, exist_ok=True)
        MlflowClient(self.store_uri).search_experiments(max_results=1)  # runs the migrations once, here
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            self.store_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # ~10x faster requests on 2 cores
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        return self

    def healthy(self) -> bool:
        """Whether the UI answers ``/health``."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def ensure(self, timeout: float = 120.0) -> bool:
        """Wait until the UI answers (restarting it once if its process ended); ``False`` if it never does."""
        deadline = time.monotonic() + timeout
        restarted = False
        while time.monotonic() < deadline:
            if self.healthy():
                return True
            if self.proc is None or self.proc.poll() is not None:
                if restarted:
                    return False
                self.start()
                restarted = True
            time.sleep(1.0)
        return False

    def stop(self) -> None:
        """Terminate the UI and its workers (its own process group)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None
