"""Faults a team's week brings, against the real servers: a killed loop, a scheduled deployment on a
real ``prefect server``, hand-made tasks, odd labels, a changed label cap, an MLflow outage, user errors.

Each test names the issue-9 point it covers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fixtures_projects import annotator, services

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_env(label_studio, home: Path, **extra) -> dict:
    env = {
        **os.environ,
        "DATAEFF_HOME": str(home),
        "DATAEFF_TEST_LS_TOKEN": label_studio.token,
        "PYTHONPATH": str(ROOT),
        **extra,
    }
    return env


def _dataeff(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _active_slots(project: str) -> int:
    from prefect import get_client

    from flows.locks import limit_name

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(limit_name(project)).active_slots


def _start_killable_loop(cfg, label_studio, home, prefect_api_url) -> subprocess.Popen:
    """``dataeff loop`` in a subprocess on the harness's API; returns once it holds the project's lock."""
    from flows.locks import holder_path

    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "loop", cfg.name],
        env=_cli_env(label_studio, home, PREFECT_API_URL=prefect_api_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 180
    while not holder_path(cfg.name, home).exists():
        if proc.poll() is not None:
            pytest.fail(f"dataeff loop exited before taking the lock:\n{proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, "dataeff loop never took the project's lock"
        time.sleep(0.2)
    return proc


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)  # reaped: its pid is gone, as after a real kill -9
    proc.stdout.close()


# ----------------------------------------------------------------------------- 2. a killed loop


def test_kill_9_of_a_running_iteration_does_not_lock_the_project(flow_project, label_studio, prefect_api_url):
    from flows.bootstrap import bootstrap
    from flows.locks import read_holder
    from flows.loop import loop_iteration

    cfg, gold, home = flow_project
    bootstrap(cfg.name, home=str(home))
    annotator(cfg, gold).label_requested()  # the iteration has real work: CoS-Low + zero-shot fine-tune
    proc = _start_killable_loop(cfg, label_studio, home, prefect_api_url)
    holder = read_holder(cfg.name, home)
    assert holder is not None and holder.pid == proc.pid and holder.flow_run_id
    _kill9(proc)
    assert _active_slots(cfg.name) == 1  # the killed run still holds the slot: the fault is real

    t0 = time.monotonic()
    summary = loop_iteration(cfg.name, home=str(home), lock_timeout_seconds=240)  # the next one runs
    waited = time.monotonic() - t0
    assert summary["coslow"] is not None and "0" in summary["measured"]
    assert waited < 60 + 2 * 10 + 60  # lease (60 s) + two polls + the iteration itself
    assert _active_slots(cfg.name) == 0 and read_holder(cfg.name, home) is None


def test_dataeff_unlock_releases_a_killed_holder_at_once_and_refuses_a_live_one(
    flow_project, label_studio, prefect_api_url
):
    from flows.bootstrap import bootstrap
    from flows.locks import project_slot

    cfg, gold, home = flow_project
    bootstrap(cfg.name, home=str(home))
    annotator(cfg, gold).label_requested()
    env = _cli_env(label_studio, home, PREFECT_API_URL=prefect_api_url)
    proc = _start_killable_loop(cfg, label_studio, home, prefect_api_url)
    refused = _dataeff("unlock", cfg.name, env=env)
    assert refused.returncode == 2 and f"kill {proc.pid}" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    _kill9(proc)
    assert _active_slots(cfg.name) == 1

    done = _dataeff("unlock", cfg.name, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["was_locked"] and out["holder"]["pid"] == proc.pid
    assert _active_slots(cfg.name) == 0
    with project_slot(cfg.name, timeout_seconds=5):  # free now, without waiting for the lease
        pass


class _Lines(list):
    """A logger whose WARNING+ messages land in this list."""

    def logger(self, name: str):
        import logging

        lines = self

        class Handler(logging.Handler):
            def emit(self, record):
                lines.append(record.getMessage())

        logger = logging.getLogger(name)
        logger.addHandler(Handler(logging.WARNING))
        return logger


def test_a_waiting_run_says_whom_it_waits_for(prefect_harness, tmp_path, monkeypatch):
    from flows.locks import LockTimeout, project_slot

    monkeypatch.setenv("DATAEFF_HOME", str(tmp_path))
    project = f"wait-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    held = threading.Event()
    release = threading.Event()

    def holder():
        with project_slot(project, timeout_seconds=30):
            held.set()
            release.wait(60)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(60)
    lines = _Lines()
    try:
        with pytest.raises(LockTimeout) as info:
            with project_slot(project, timeout_seconds=3, poll_seconds=1, logger=lines.logger(f"test.{project}")):
                pass
    finally:
        release.set()
        t.join()
    waiting = [line for line in lines if "waiting for its loop lock" in line]
    assert waiting and f"pid {os.getpid()}" in waiting[0] and "since" in waiting[0]
    assert f"dataeff unlock {project}" in waiting[0] and f"dataeff unlock {project}" in str(info.value)


# ----------------------------------------------------------------------------- 1. scheduled runs


@pytest.fixture(params=["sqlite", "postgres"])
def prefect_server(request, tmp_path):
    """A real ``prefect server start`` (scheduler every 5 s) with its own home, on its own SQLite database
    (the single-user default) or on a fresh database of the local Postgres (the team profile, dropped after)."""
    from fixtures_prefect import postgres_database
    from fixtures_prefect import prefect_server as start

    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(postgres_database("dataeff_prefect")) if request.param == "postgres" else None
        yield stack.enter_context(
            start(tmp_path / "prefect-home", dsn, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5")
        )


def _deployment_runs(url: str, deployment: str) -> list:
    import asyncio

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async def read():
        async with PrefectClient(url) as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
            )

    return asyncio.run(read())


def test_served_project_runs_on_its_schedule(flow_project, label_studio, prefect_server):
    from flows.bootstrap import bootstrap
    from flows.serve import deployment_name

    cfg, gold, home = flow_project
    bootstrap(cfg.name, home=str(home))
    url, server_log = prefect_server
    serve_log = home / "serve.log"
    with open(serve_log, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", cfg.name, "--interval", "10"],
            env=_cli_env(label_studio, home, PREFECT_API_URL=url),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 300
        completed: list = []
        while len(completed) < 2:
            assert proc.poll() is None, f"dataeff serve exited:\n{serve_log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"fewer than 2 scheduled runs completed in 300 s\nserver log:\n"
                f"{server_log.read_text()[-3000:]}\nserve log:\n{serve_log.read_text()[-3000:]}"
            )
            time.sleep(3)
            runs = _deployment_runs(url, deployment_name(cfg.name))
            completed = [r for r in runs if r.state and r.state.is_completed()]
            failed = [r for r in runs if r.state and (r.state.is_failed() or r.state.is_crashed())]
            assert not failed, f"a scheduled run failed:\n{serve_log.read_text()[-3000:]}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert all(r.auto_scheduled for r in completed)  # made by the server's scheduler, not by hand
    assert "Can't evaluate bulk DML" not in server_log.read_text()
    decisions = [r for r in services(cfg).tracker.list_runs(cfg.name) if r["kind"] == "decision"]
    assert len(decisions) == 1  # the scheduled runs saw the same labels: one decision, logged once


# ----------------------------------------------------------------------------- 5. user errors


def test_user_errors_print_one_line_before_any_flow_starts(flow_project, label_studio):
    cfg, _, home = flow_project
    env = _cli_env(label_studio, home)
    missing = _dataeff("loop", "no-such-project", env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]  # one line
    assert "dataeff project create" in missing.stderr and "Traceback" not in missing.stderr

    wrong = _dataeff("loop", cfg.name, env={**env, "DATAEFF_TEST_LS_TOKEN": "not-a-token"})
    assert wrong.returncode == 2, wrong.stderr
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1 and "token" in lines[0].lower() and "Traceback" not in wrong.stderr
    assert "Beginning flow run" not in wrong.stderr  # checked before Prefect started

    not_ready = _dataeff("loop", cfg.name, env=env)  # created, never bootstrapped
    assert not_ready.returncode == 2 and f"dataeff bootstrap {cfg.name}" in not_ready.stderr
    assert "Traceback" not in not_ready.stderr and "Beginning flow run" not in not_ready.stderr


# ----------------------------------------------------------------------------- 6 + 7. hand-made tasks, pull errors


def test_loop_output_names_bad_labels_and_hand_made_tasks_once(flow_project, label_studio, prefect_api_url):
    from flows.bootstrap import bootstrap

    cfg, gold, home = flow_project
    bootstrap(cfg.name, home=str(home))
    labeled = annotator(cfg, gold).label_requested()
    svc = services(cfg)
    pid = cfg.label_studio_project_id
    roles = svc.tracker.read_bootstrap(cfg.name, cfg.model)
    reserved = set(roles["lowconf"]) | set(roles["eval"])
    victim = next(t for t in svc.ls.tasks(pid) if t.dataeff_id not in reserved)
    svc.ls._sdk.annotations.create(  # a label outside the config, written behind dataeff's back
        id=victim.task_id,
        result=[{"from_name": "answer", "to_name": "prompt", "type": "choices", "value": {"choices": ["maybe"]}}],
    )
    hand = svc.ls._sdk.tasks.create(project=pid, data={"prompt": "Question: added by hand in the UI. Answer:"})
    svc.ls._sdk.annotations.create(
        id=hand.id,
        result=[{"from_name": "answer", "to_name": "prompt", "type": "choices", "value": {"choices": ["yes"]}}],
    )

    run = _dataeff("loop", cfg.name, env=_cli_env(label_studio, home, PREFECT_API_URL=prefect_api_url), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["labeled"] == labeled  # neither the bad label nor the hand-made task counted
    assert [e["dataeff_id"] for e in out["errors"]] == [victim.dataeff_id] and "maybe" in out["errors"][0]["reason"]
    assert out["unmanaged_task_ids"] == [hand.id]
    assert len(out["warnings"]) == 2 and f"task ids {hand.id}" in out["warnings"][1]
    assert "not counted" in out["warnings"][1]
    assert run.stderr.count(f"skipped item {victim.dataeff_id}") == 1  # each warning printed once
    assert run.stderr.count(f"task ids {hand.id}") == 1


# ----------------------------------------------------------------------------- 8. decision record follows settings


def test_changing_the_label_cap_logs_a_new_decision_that_label_studio_shows(flow_project):
    from flows.bootstrap import bootstrap
    from flows.loop import loop_iteration

    cfg, gold, home = flow_project
    bootstrap(cfg.name, home=str(home))
    annotator(cfg, gold).label_requested()
    first = loop_iteration(cfg.name, home=str(home))
    svc = services(cfg)
    decisions = lambda: svc.tracker.list_runs(cfg.name, kind="decision")  # noqa: E731 - newest first
    assert len(decisions()) == 1
    assert loop_iteration(cfg.name, home=str(home))["new_runs"] == 0  # same inputs: nothing new

    cfg.label_cap = 12  # the team can give fewer labels than the grid's next budget
    cfg.save()
    second = loop_iteration(cfg.name, home=str(home))
    assert second["new_runs"] == 1 and len(decisions()) == 2
    newest = decisions()[0]
    assert newest["tags"]["dataeff.reason"] == second["decision"]["reason"]
    assert svc.ls.get_status(cfg.label_studio_project_id) == second["decision"]["status_text"]
    assert second["label_cap"] == 12 and first["label_cap"] == 5000


# ----------------------------------------------------------------------------- 9. MLflow outage


@pytest.fixture
def mlflow_server(tmp_path):
    from fixtures_mlflow import MlflowServer

    server = MlflowServer(f"sqlite:///{tmp_path / 'mlflow-server.db'}", tmp_path / "mlflow-server")
    (tmp_path / "mlflow-server").mkdir()
    server.start()
    yield server
    server.stop()


def test_mlflow_outage_keeps_the_finished_fine_tune_and_logs_it_when_back(flow_project, mlflow_server, caplog):
    import logging

    from prefect import flow

    from dataeff.finetune import FinetuneResult
    from dataeff.iteration import partition
    from flows.bootstrap import bootstrap
    from flows.loop import finetune_budget, measure_budget

    cfg, gold, home = flow_project
    cfg.tracking_uri = mlflow_server.uri
    cfg.save()
    bootstrap(cfg.name, home=str(home))
    annotator(cfg, gold).label_requested()
    svc = services(cfg)
    roles = svc.tracker.read_bootstrap(cfg.name, cfg.model)
    role_of = {i: r for r, ids in roles.items() for i in ids}
    sets = partition(list(svc.ls.pull_labeled(cfg.label_studio_project_id).examples), role_of)
    caplog.set_level(logging.INFO)
    lines = lambda: [r.getMessage() for r in caplog.records]  # noqa: E731

    @flow
    def measure(budget: int) -> float:
        return measure_budget(svc, sets, budget)

    mlflow_server.stop()  # down before the fine-tune ends; training does not need MLflow
    restart = threading.Timer(20.0, mlflow_server.start)
    restart.start()
    try:
        score = measure(0)
    finally:
        restart.join()
    assert 0 <= score <= 1
    assert any("MLflow is unreachable" in line and "kept" in line for line in lines())
    assert svc.tracker.finetuned_budgets(cfg.name, cfg.model) == {0: score}  # logged once, when MLflow was back
    assert not list((home / "pending").rglob("*.json"))  # forgotten once logged

    # A result measured but never logged (the run died during the outage) is logged, not measured again.
    @flow
    def measure_only(budget: int) -> FinetuneResult:
        result, system = finetune_budget(svc, sets, budget)
        assert system and all(s.name.startswith("system/") for s in system)
        return result

    kept = measure_only(0)
    assert len(list((home / "pending").rglob("*.json"))) == 1
    caplog.clear()
    assert measure(0) == kept.score
    assert any("logging the kept result instead of training again" in line for line in lines())
    assert not list((home / "pending").rglob("*.json"))
    assert len(svc.tracker.list_runs(cfg.name, kind="finetune")) == 1  # same labels, same budget: one run


def test_sigterm_stops_an_iteration_cleanly_and_frees_the_lock(flow_project, label_studio, prefect_api_url):
    from flows.bootstrap import bootstrap
    from flows.locks import read_holder

    cfg, gold, home = flow_project
    bootstrap(cfg.name, home=str(home))
    annotator(cfg, gold).label_requested()
    proc = _start_killable_loop(cfg, label_studio, home, prefect_api_url)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), output[-3000:]  # the conventional exit
    assert "Traceback" not in output and "Task run is not set" not in output, output[-3000:]
    assert "aborted by a termination signal" in output  # Prefect marks the run Crashed and says why
    assert _active_slots(cfg.name) == 0 and read_holder(cfg.name, home) is None
