"""``--runner ray``: a real local Ray (2 CPU workers, started here once, stopped at the end), tiny model, real MLflow.

The study of 2 tasks x 2 budgets runs its units on the workers (two fine-tunes overlap in different processes),
gives the local runner's numbers and runs, writes nothing on a re-run, and survives a worker killed
mid-study (SIGKILL of a process running a unit) with every run logged once. Sharded pool scoring
equals unsharded scoring.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from test_study import _settings, _write_task  # noqa: E402 - after the skip: the same tiny tasks as the study tests

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"study-task": 2, "study-coslow": 4, "study-finetune": 4, "study-summary": 1}


@pytest.fixture(scope="module")
def ray_runner():
    """One local Ray with 2 CPUs for the module (workers import this checkout), shut down at the end."""
    from flows.ray_runner import RayRunner

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}},  # this checkout, and _warm below
    )
    try:
        runner = RayRunner()  # joins the Ray started above
        assert runner.workers == 2 and runner.options == {"num_gpus": 0, "num_cpus": 1}
        _warm_workers(2)
        yield runner
    finally:
        ray.shutdown()


def _warm(seconds: float) -> int:
    import flows.study  # noqa: F401 - what a unit imports (torch, transformers, peft): seconds on 2 busy cores

    time.sleep(seconds)
    return os.getpid()


def _warm_workers(n: int) -> None:
    """Until ``n`` worker processes have imported the study's code: a unit then starts at once on an idle
    worker, instead of the first warm worker taking every short unit while the other is still importing torch."""
    remote = ray.remote(num_cpus=1)(_warm)
    deadline = time.monotonic() + 300
    while len(set(ray.get([remote.remote(1.0) for _ in range(n)]))) < n:
        assert time.monotonic() < deadline, "Ray did not start two workers"


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray-tasks")
    return [_write_task(d / "yesno.jsonl", 76, "yesno"), _write_task(d / "sentiment.jsonl", 72, "sent")]


def _study(tiny_model_dir, paths, name):
    """2 tasks x budgets 0 and 8, one seed; 20 optimizer steps so that a fine-tune lasts long enough to overlap."""
    from dataeff.finetune import FinetuneSettings
    from dataeff.models import LoraSettings

    finetune = FinetuneSettings(
        lora=LoraSettings(r=4, alpha=8), max_steps=20, batch_size=8, eval_batch_size=16, max_new_tokens=3
    )
    return _settings(tiny_model_dir, paths, name=name, budgets=(0, 8), seeds=(0,), finetune=finetune)


def _runs_once(tracker, study: str) -> list[dict]:
    runs = tracker.list_study_runs(study)
    keys = [r["tags"]["dataeff.run_key"] for r in runs]
    assert len(keys) == len(set(keys)), "a run key was logged twice"
    assert all(r["status"] == "FINISHED" for r in runs), [(r["kind"], r["status"]) for r in runs]
    assert Counter(r["kind"] for r in runs) == KINDS
    return runs


def _numbers(out: dict) -> list[tuple]:
    return [(t["task"], t["means"], t["auc"]) for t in out["tasks"]]


@pytest.fixture(scope="module")
def local_study(tiny_model_dir, tiny_loaded, two_tasks, tmp_path_factory):
    """The reference: the same study with the local runner (own MLflow store), and its wall time."""
    from flows.study import run_study
    from integrations.mlflow_tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path_factory.mktemp('local') / 'mlflow.db'}")
    study = _study(tiny_model_dir, two_tasks, "ray-ref")
    t0 = time.perf_counter()
    out = run_study(study, tracker, loaded=tiny_loaded, progress=False)
    return out, time.perf_counter() - t0, tracker


def _task_data(tracker, study: str) -> dict[str, dict]:
    """Per task: its stored result and the pool's confidence scores (from the task's parent run)."""
    from flows.study import CONFIDENCE_JSON, TASK_JSON

    out = {}
    for run in tracker.list_study_runs(study):
        if run["kind"] == "study-task":
            result = tracker.read_run_json(run["run_id"], TASK_JSON)
            out[result["task"]] = {"result": result, "scores": tracker.read_run_json(run["run_id"], CONFIDENCE_JSON)}
    return out


def _assert_same_measurements(tracker, local_tracker, study: str) -> None:
    """Confidence and CoS-Low as the local runner's, up to float noise (a worker computes with one thread).

    The tiny random model's confidences lie within ~1e-6 of each other, so noise of ~1e-10 can reorder
    the bottom decile and draw other low-confidence examples: CoS-Low ``low`` is compared where the
    same examples were drawn, and otherwise the confidences must be equal up to that noise.
    """
    ray_tasks, local_tasks = _task_data(tracker, study), _task_data(local_tracker, study)
    assert set(ray_tasks) == set(local_tasks) == {"yesno", "sentiment"}
    same_draws = 0
    for name, mine in ray_tasks.items():
        ref = local_tasks[name]
        ours, theirs = mine["scores"]["scores"], ref["scores"]["scores"]
        assert [(x["id"], x["answer"], x["n_tokens"]) for x in ours] == [
            (x["id"], x["answer"], x["n_tokens"]) for x in theirs
        ]
        assert [x["confidence"] for x in ours] == pytest.approx([x["confidence"] for x in theirs], abs=1e-6)
        rand, ref_rand = mine["result"]["coslow_random"], ref["result"]["coslow_random"]
        assert rand["ids"] == ref_rand["ids"] and rand["draws"] == pytest.approx(ref_rand["draws"], abs=1e-6)
        low, ref_low = mine["result"]["coslow_low"], ref["result"]["coslow_low"]
        if low["ids"] == ref_low["ids"]:
            assert low["draws"] == pytest.approx(ref_low["draws"], abs=1e-6)
            same_draws += 1
    assert same_draws >= 1


def test_study_on_ray_runs_every_unit_on_a_worker_and_equals_local(
    ray_runner, local_study, tiny_model_dir, two_tasks, tmp_path
):
    from flows.study import run_study
    from integrations.mlflow_tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    study = _study(tiny_model_dir, two_tasks, "ray-ref")
    events: list[dict] = []
    t0 = time.perf_counter()
    out = run_study(study, tracker, loaded=None, progress=False, runner=ray_runner, on_run=events.append)
    seconds = time.perf_counter() - t0
    reference, local_seconds, local_tracker = local_study
    print(f"\nsame study: local runner {local_seconds:.1f} s, ray runner (2 workers, warm) {seconds:.1f} s")

    # every unit ran on a Ray worker, never in this process (which worker took which unit is Ray's choice:
    # a short fine-tune may well follow another on the same worker; test_two_fine_tunes_... shows the overlap)
    units = [e["unit"] for e in events if "unit" in e]
    assert len(units) == 8 and {u["runner"] for u in units} == {"ray"}  # 4 fine-tunes + 4 CoS-Low
    assert os.getpid() not in {u["pid"] for u in units}

    # the local runner's numbers and runs
    assert _numbers(out) == _numbers(reference)  # fine-tune scores, AUC: exactly
    _assert_same_measurements(tracker, local_tracker, study.study_name)
    runs = _runs_once(tracker, study.study_name)
    assert out["runs_written"] == len(runs)

    # a re-run finds every run and submits nothing
    again = run_study(study, tracker, loaded=None, progress=False, runner=ray_runner)
    assert again["runs_written"] == 0 and len(tracker.list_study_runs(study.study_name)) == len(runs)


def _overlap(a: dict, b: dict) -> bool:
    return a["pid"] != b["pid"] and a["started"] < b["ended"] and b["started"] < a["ended"]


def test_two_fine_tunes_run_at_once_on_two_worker_processes(ray_runner, tiny_model_dir, tiny_loaded, two_tasks):
    """Two fine-tunes submitted together to the 2 idle workers run at the same time in different processes,
    and each gives the score of the same fine-tune run in this process."""
    from dataeff.finetune import FinetuneSettings, run_finetune
    from dataeff.models import LoraSettings
    from dataeff.study import prepare_task
    from flows.runners import ModelSpec
    from flows.study import finetune_unit

    study = _study(tiny_model_dir, two_tasks, "ray-overlap")
    fs = FinetuneSettings(  # ~2 s each on a loaded 2-core machine: long enough to overlap whatever the start-up
        lora=LoraSettings(r=4, alpha=8), max_steps=60, batch_size=8, eval_batch_size=16, max_new_tokens=3
    )
    tasks = [prepare_task(path, study) for path in two_tasks]
    spec = ModelSpec(str(tiny_model_dir), "cpu", "fp32")
    _warm_workers(2)  # a worker killed by another test is replaced: let both import torch first
    jobs = [ray_runner.submit(finetune_unit, spec, t.pool, t.eval, t.spec, 8, fs) for t in tasks]
    results = [job.result() for job in jobs]
    a, b = (vars(job.info) for job in jobs)
    assert os.getpid() not in {a["pid"], b["pid"]} and _overlap(a, b), (a, b)

    here = run_finetune(tiny_loaded, tasks[0].pool, tasks[0].eval, tasks[0].spec, 8, fs, progress=False)
    assert results[0][1]["steps"] == here.steps == 60
    assert results[0][1]["score"] == pytest.approx(here.score, abs=1e-9)


def _unit_processes() -> list[int]:
    """PIDs of Ray worker processes running a unit now (Ray titles them ``ray::_run_unit``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::_run_unit"):
            pids.append(int(entry.name))
    return pids


def test_a_worker_killed_mid_study_is_rerun_and_every_run_is_logged_once(
    ray_runner, local_study, tiny_model_dir, two_tasks, tmp_path
):
    from flows.study import run_study
    from integrations.mlflow_tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    study = _study(tiny_model_dir, two_tasks, "ray-ref")
    killed: list[int] = []
    stop = threading.Event()

    def kill_one_worker():  # the fault: SIGKILL of the first process seen running a unit
        while not stop.is_set() and not killed:
            for pid in _unit_processes():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    try:
        out = run_study(study, tracker, loaded=None, progress=False, runner=ray_runner)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "no worker was running a unit to kill"
    _runs_once(tracker, study.study_name)
    assert _numbers(out) == _numbers(local_study[0])


def test_sharded_pool_scoring_equals_unsharded(ray_runner, tiny_model_dir, tiny_loaded, two_tasks):
    from dataeff.confidence import score_confidence
    from dataeff.data import read_examples
    from flows.runners import LocalRunner, ModelSpec, score_pool_sharded, shard_pool

    pool = read_examples(two_tasks[1])[:40]
    options = {"batch_size": 4, "max_new_tokens": 4, "chat_template": False, "stop_strings": ("\n",)}
    whole = score_confidence(tiny_loaded, examples=pool, progress=False, **options)
    spec = ModelSpec(str(tiny_model_dir), "cpu", "fp32")
    groups = shard_pool(pool, 3, 4, [len(e.prompt) for e in pool])
    assert len(groups) == 3 and sorted(i for g in groups for i in g) == list(range(len(pool)))
    assert all(len(g) % 4 == 0 for g in groups[:-1])  # cut between whole batches

    sharded = score_pool_sharded(ray_runner, spec, pool, shards=3, **options)
    assert [s.id for s in sharded] == [e.id for e in pool]  # merged in input order
    assert [s.answer for s in sharded] == [s.answer for s in whole]
    assert [s.n_tokens for s in sharded] == [s.n_tokens for s in whole]
    assert [s.confidence for s in sharded] == pytest.approx([s.confidence for s in whole], abs=1e-6)
    assert sharded.batch_size == 4

    local = score_pool_sharded(LocalRunner(lambda _spec: tiny_loaded), spec, pool, **options)
    assert [s.as_dict() for s in local] == [s.as_dict() for s in whole]


def test_unknown_runner_names_the_choices():
    from flows.runners import make_runner

    with pytest.raises(ValueError, match="choose one of local, ray"):
        make_runner("dask")
    assert make_runner("local").parallel is False


def test_bootstrap_on_ray_scores_the_pool_in_shards_like_local(ray_runner, make_project):
    """``dataeff bootstrap --runner ray`` (the flow with runner="ray") on a real Label Studio project: the same
    summary and roles as the local bootstrap of an identical project."""
    from fixtures_projects import pool_of, services

    from flows.bootstrap import bootstrap

    pool, _ = pool_of(60)
    local_cfg, home = make_project(pool, "boot-local")
    ray_cfg, _ = make_project(pool, "boot-ray")
    local = bootstrap(local_cfg.name, home=str(home))
    on_ray = bootstrap(ray_cfg.name, home=str(home), runner="ray")
    assert on_ray == {**local, "project": ray_cfg.name} and on_ray["scored"] == 60
    roles = [services(c).tracker.read_bootstrap(c.name, c.model) for c in (local_cfg, ray_cfg)]
    assert roles[0] == roles[1]


# --------------------------------------------------------------------------- the team profile


@pytest.fixture()
def prefect_postgres_server(tmp_path):
    """A real ``prefect server start`` on a fresh Postgres database (dropped at the end); yields its API URL and DSN."""
    from fixtures_prefect import postgres_database, prefect_server

    with postgres_database("dataeff_prefect") as dsn, prefect_server(tmp_path / "prefect-home", dsn) as (url, _log):
        yield url, dsn


def test_team_profile_on_postgres(ray_runner, prefect_postgres_server, mlflow_server_uri, tiny_model_dir, two_tasks):
    """The study as a Prefect flow run recorded in a Prefect server on Postgres, its runs in an MLflow server on
    Postgres, its units on Ray: every run logged once, the flow run completed in Postgres."""
    import asyncio
    import uuid

    import psycopg2
    from prefect.client.orchestration import PrefectClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.study_flow import study_flow
    from integrations.mlflow_tracking import Tracker

    url, dsn = prefect_postgres_server
    study = _study(tiny_model_dir, two_tasks, f"team-{uuid.uuid4().hex[:8]}")
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with temporary_settings({PREFECT_API_URL: url}):
        out = study_flow(study, mlflow_server_uri, runner="ray")
        for worker in (APILogWorker, EventsWorker):  # logs and events reach the server before it stops
            worker.drain_all(timeout=30)
    _runs_once(Tracker(mlflow_server_uri), study.study_name)
    assert out["tracking_uri"].startswith("http://127.0.0.1") and [t["task"] for t in out["tasks"]] == [
        "yesno",
        "sentiment",
    ]

    async def runs():
        async with PrefectClient(url) as client:
            return await client.read_flow_runs()

    flow_runs = asyncio.run(runs())
    assert [(r.name is not None, r.state.type.value) for r in flow_runs] == [(True, "COMPLETED")]
    conn = psycopg2.connect(dsn)  # the run is in Postgres, not in a SQLite file
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM flow_run")
            assert cur.fetchone()[0] == 1
    finally:
        conn.close()
