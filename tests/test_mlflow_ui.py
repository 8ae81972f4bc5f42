"""The demo's MLflow UI: started on a store whose schema already exists, restarted when it dies."""

from __future__ import annotations

import socket

from mlflow.tracking import MlflowClient

from integrations.mlflow_ui import MlflowUI, experiment_link


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_ui_serves_the_demo_store_and_comes_back_after_dying(tmp_path):
    ui = MlflowUI(tmp_path, _free_port())
    try:
        ui.start()
        # the schema exists before the UI starts: a client of the demo can write at once
        exp = MlflowClient(ui.store_uri).create_experiment("demo-x")
        assert ui.ensure(timeout=180), ui.log_path.read_text()[-2000:]
        assert ui.proc is not None
        first = ui.proc.pid
        ui.stop()
        assert not ui.healthy()
        ui.proc = None  # as if it had died: ensure() starts it again
        assert ui.ensure(timeout=180) and ui.proc is not None and ui.proc.pid != first
        import json
        import urllib.request

        with urllib.request.urlopen(f"{ui.url}/api/2.0/mlflow/experiments/get?experiment_id={exp}", timeout=30) as resp:
            assert json.load(resp)["experiment"]["name"] == "demo-x"
        # the printed link names the experiment's runs in the machine-learning workflow, served by the UI
        link = ui.experiment_url("demo-x")
        assert link == f"{ui.url}/#/experiments/{exp}/runs?workflowType=machine_learning"
        with urllib.request.urlopen(link.split("#")[0], timeout=30) as resp:
            assert resp.status == 200 and b"<html" in resp.read(2000).lower()
        assert ui.experiment_url("no-such") == experiment_link(ui.url, None)
    finally:
        ui.stop()
    assert not ui.healthy()
