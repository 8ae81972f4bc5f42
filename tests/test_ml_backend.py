"""Label Studio ML-backend protocol (issue 12): `dataeff ml-backend` against the real Label Studio server.

Pure tests of the request/response mapping and of the early-run coalescing, then end to end: a
backend on a free port is connected to a project through Label Studio's API, Label Studio reports it
connected and retrieves its predictions (read back on the tasks), Label Studio's own webhook reaches
it when annotations are made, and a webhook starts an early loop run (a decision run in MLflow and a
Prefect flow run tagged ``early-run``) while every webhook call is answered well within 1 s.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from dataeff.data import TaskSpec
from integrations import ls_ml_backend as proto
from integrations.label_studio import label_config

CHOICES = label_config(TaskSpec(name="t", labels=("yes", "no")))
FREE_TEXT = label_config(TaskSpec(name="t", labels=None))


def _task(task_id: int, item: str | None, prompt: str = "Is it plausible? Answer:") -> dict:
    data: dict = {"prompt": prompt, "dataeff_priority": 0}
    if item is not None:
        data["dataeff_id"] = item
    return {"id": task_id, "data": data, "annotations": [], "predictions": [], "project": 3}


# ----------------------------------------------------------------------------- pure mapping


def test_project_id_is_read_from_every_form_label_studio_sends():
    assert proto.project_id_of("12.1732300000") == 12  # /setup and /predict: "<id>.<created-at>"
    assert proto.project_id_of({"id": 7, "title": "x"}) == 7  # webhooks: the project dict
    assert proto.project_id_of(5) == 5
    assert proto.project_id_of(None) is None
    assert proto.project_id_of("") is None
    assert proto.project_id_of({"title": "no id"}) is None
    assert proto.project_id_of(True) is None


def test_predictions_are_one_per_task_in_the_label_config_format():
    tasks = [_task(1, "a"), _task(2, "withheld"), _task(3, None), _task(4, "bad"), _task(5, "a")]
    answers = {"a": ("yes", 0.91234567), "bad": ("maybe", 0.5)}
    out = proto.prediction_results(tasks, answers, CHOICES, "dataeff-m-lora-b50-abc", project_id=3)
    assert len(out) == len(tasks)  # Label Studio drops the whole batch when the counts differ
    region = {"from_name": "answer", "to_name": "prompt", "type": "choices", "value": {"choices": ["yes"]}}
    assert out[0] == {"result": [region], "score": pytest.approx(0.912346), "model_version": "dataeff-m-lora-b50-abc"}
    assert out[4]["result"] == [region]  # the same item in two tasks: both answered
    for i in (1, 2, 3):  # withheld by the rules, a hand-made task, a label not in the config
        assert out[i] == {"result": [], "score": None, "model_version": "dataeff-m-lora-b50-abc"}
    # items the request's time budget did not reach: no prediction (an empty list), in their place
    later = proto.prediction_results(tasks, answers, CHOICES, "v", project_id=3, later=["a"])
    assert len(later) == len(tasks) and later[0] == later[4] == [] and later[1]["result"] == []
    text = proto.prediction_results([_task(9, "a")], {"a": ("free words", 0.4)}, FREE_TEXT, "v")
    assert text[0]["result"] == [
        {"from_name": "answer", "to_name": "prompt", "type": "textarea", "value": {"text": ["free words"]}}
    ]


def test_tasks_map_to_dataeff_items_like_the_adapter_imports_them():
    tasks = [_task(1, "q1", "p1"), _task(2, None), {"id": 3}, _task(4, "q1", "p1"), _task(5, "q2", "p2"), "junk"]
    examples = proto.task_examples(tasks)
    assert [(e.id, e.prompt) for e in examples] == [("q1", "p1"), ("q2", "p2")]
    assert proto.task_example({"id": 6, "data": {"dataeff_id": 17, "prompt": "x"}}).id == "17"


def test_only_annotation_changes_and_start_training_ask_for_a_loop_run():
    for action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"):
        event = proto.parse_event({"action": action, "project": {"id": 4}})
        assert event.triggers and event.project_id == 4
    for payload in ({"action": "PROJECT_UPDATED", "project": {"id": 4}}, {"action": "TASKS_CREATED"}, {}, None, []):
        assert not proto.parse_event(payload).triggers


def test_a_burst_of_requests_makes_at_most_one_pending_run():
    """The scheduler's coalescing, with the child process replaced by a run we hold open."""
    from flows.webhook import EarlyRuns

    runs: list[float] = []
    release = threading.Event()

    class Held(EarlyRuns):
        def _how(self) -> str:
            return "local"

        def _run_local(self, reason: str) -> None:
            with self._cond:
                self._pending = self.stats.pending = False
                self._record("local", reason)
            runs.append(time.monotonic())
            release.wait(30)

    early = Held(f"p-{uuid.uuid4().hex[:6]}", mode="local")
    t0 = time.monotonic()
    first = early.request("ANNOTATION_CREATED")
    assert first["status"] == "scheduled" and time.monotonic() - t0 < 0.1
    deadline = time.monotonic() + 10
    while not runs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(runs) == 1  # the first run is going
    answers = [early.request("ANNOTATION_UPDATED")["status"] for _ in range(20)]
    assert answers == ["scheduled"] + ["coalesced"] * 19  # one more run pending, the rest folded into it
    release.set()
    deadline = time.monotonic() + 10
    while len(runs) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert len(runs) == 2  # exactly one run after the burst
    status = early.status()
    assert status["requested"] == 21 and status["started"] == 2 and status["coalesced"] == 19
    assert not status["pending"]
    early.close()
    off = EarlyRuns("p", mode="off")
    assert off.request("ANNOTATION_CREATED")["status"] == "off" and off.status()["started"] == 0


# ----------------------------------------------------------------------------- against the real servers


def _yes_sayer(folder):
    """A tiny real model that answers " yes" to everything (attention and MLP outputs zeroed, one
    positive hidden dimension read only by the " yes" row of an untied head): its answers are valid
    labels, so the pre-annotation rules let them through and Label Studio stores real choices."""
    import torch
    from tiny import build_tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    yes = tok.encode(" yes", add_special_tokens=False)
    assert len(yes) == 1, yes
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[yes[0], 0] = 20.0
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _post(url: str, payload: dict) -> tuple[int, dict, float]:
    import httpx

    t0 = time.perf_counter()
    response = httpx.post(url, json=payload, timeout=10)
    return response.status_code, response.json(), time.perf_counter() - t0


def test_label_studio_connects_the_backend_retrieves_predictions_and_a_webhook_starts_a_loop_run(
    make_project, label_studio, tmp_path
):
    import ls_testing
    from fixtures_projects import annotator as _annotator
    from fixtures_projects import pool_of
    from fixtures_projects import services as _services
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from app.ml_backend import MODEL_CLASS, PREDICT_BUDGET_SECONDS, PREDICT_CHUNK, Backend, BackendServer, create_app
    from dataeff.project import ProjectConfig
    from flows.bootstrap import bootstrap
    from flows.predictions import current_predictor
    from flows.webhook import EARLY_RUN_TAG, EarlyRuns
    from integrations.ls_server import free_port

    pool, gold = pool_of(60)
    cfg, home = make_project(pool, prefix="mlb")
    cfg.model = str(_yes_sayer(tmp_path / "yes-sayer"))
    cfg.save()
    cfg = ProjectConfig.load(cfg.name)
    svc = _services(cfg)
    pid = cfg.label_studio_project_id
    hand_made = svc.ls._sdk.tasks.create(project=pid, data={"prompt": "typed in Label Studio"}).id

    backend = Backend(svc, EarlyRuns(cfg.name, home=str(home), mode="off"))
    server = BackendServer(create_app(backend), port=free_port()).start()
    try:
        version = current_predictor(svc).model_version
        status, health, took = _post(server.url + "/setup", {"project": f"{pid}.1700000000", "schema": CHOICES})
        assert status == 200 and health == {"model_version": version}
        status, wrong, _ = _post(server.url + "/setup", {"project": f"{pid + 1000}.1", "schema": CHOICES})
        assert status == 400 and f"Label Studio project {pid}" in wrong["error"]

        # Settings -> Model -> Connect: Label Studio calls /health and /setup, then adds the webhook.
        info = proto.connect_backend(svc.ls, pid, server.url, title="dataeff")
        again = proto.connect_backend(svc.ls, pid, server.url, title="dataeff")  # idempotent
        assert again.id == info.id and len(proto.list_backends(svc.ls, pid)) == 1
        (listed,) = proto.list_backends(svc.ls, pid)  # Label Studio checks the backend while listing
        assert listed.connected and listed.readable_state == "Connected", listed
        assert listed.model_version == version
        hooks = proto.backend_webhooks(svc.ls, pid, server.url)
        assert hooks and hooks[0]["is_active"] and hooks[0]["send_for_all_actions"]
        svc.ls._sdk.ml.train(id=info.id)  # "Start Training" on the model page: Label Studio posts to /webhook
        assert backend.early.status()["last_reason"] == "START_TRAINING"

        # "Retrieve Predictions" in the Data Manager: Label Studio posts the tasks to /predict and stores the answers.
        chosen = [t.task_id for t in svc.ls.tasks(pid) if "dataeff_id" in t.data][:10] + [hand_made]
        t0 = time.perf_counter()
        proto.retrieve_predictions(svc.ls, pid, chosen)
        retrieve_s = time.perf_counter() - t0
        stored = {p["task_id"]: p for p in ls_testing.predictions(svc.ls, pid) if p["model_version"] == version}
        assert set(stored) == set(chosen), (sorted(stored), chosen)
        for task_id in chosen[:10]:
            assert stored[task_id]["result"] == [
                {"from_name": "answer", "to_name": "prompt", "type": "choices", "value": {"choices": ["yes"]}}
            ]
            assert 0 < stored[task_id]["score"] <= 1
        assert stored[hand_made]["result"] == [] and stored[hand_made]["score"] is None  # not a dataeff item
        proto.retrieve_predictions(svc.ls, pid, chosen)  # nothing new: every task has this model version
        assert len([p for p in ls_testing.predictions(svc.ls, pid) if p["model_version"] == version]) == len(chosen)

        # A selection too big for one request's time budget fills in over several "Retrieve predictions":
        # each answers what fits (here one chunk of 4: no budget), Label Studio stores nothing for the rest
        # and asks for exactly those next time.
        backend.budget_seconds, backend.chunk_size = 0.0, 4
        more = [t.task_id for t in svc.ls.tasks(pid) if "dataeff_id" in t.data and t.task_id not in stored][:10]
        counts = []
        for _ in range(4):
            proto.retrieve_predictions(svc.ls, pid, more)
            mine = [p for p in ls_testing.predictions(svc.ls, pid) if p["model_version"] == version]
            counts.append(len([p for p in mine if p["task_id"] in more]))
        assert counts == [4, 8, 10, 10], counts
        assert all(p["result"] for p in mine if p["task_id"] in more)  # real answers, no empty placeholders
        backend.budget_seconds, backend.chunk_size = PREDICT_BUDGET_SECONDS, PREDICT_CHUNK
        svc.ls._sdk.tasks.delete(id=str(hand_made))  # the loop would skip it; the simulated annotator cannot label it

        # Label Studio's own webhook reaches the backend when annotations are made (early runs off for now).
        boot = bootstrap(cfg.name, home=str(home))
        # the bootstrap pre-annotates the queue with the base model's valid answers, never the eval
        # split (labeled blind: its labels are what the model is measured against)
        assert boot["pre_annotations"] > 0 and "none on the" in boot["pre_annotations_reason"]
        labeled = _annotator(cfg, gold).label_requested()
        seen = backend.early.status()
        assert seen["requested"] >= labeled > 0 and seen["last_reason"] == "ANNOTATION_CREATED"
        assert seen["started"] == 0

        # With early runs on: one annotation made in Label Studio starts a loop run; a burst coalesces.
        decisions_before = len(svc.tracker.list_runs(cfg.name, "decision"))
        backend.early = EarlyRuns(cfg.name, home=str(home), mode="auto")  # harness API, no deployment: local
        labeled_ids = {str(e.id) for e in svc.ls.pull_labeled(pid).examples}
        item = next(i for i in gold if i not in labeled_ids)
        t0 = time.perf_counter()
        ls_testing.create_annotation(svc.ls, pid, item, gold[item])
        annotate_s = time.perf_counter() - t0
        assert (
            backend.early.status()["requested"] == 1 and backend.early.status()["last_reason"] == "ANNOTATION_CREATED"
        )
        burst = [
            _post(server.url + "/webhook", {"action": "ANNOTATION_UPDATED", "project": {"id": pid}, "annotation": {}})
            for _ in range(5)
        ]
        assert all(code == 201 for code, _, _ in burst)
        assert max(took for _, _, took in burst) < 1.0, [took for _, _, took in burst]
        assert [body["status"] for _, body, _ in burst].count("scheduled") <= 1  # at most one pending run
        ignored = _post(server.url + "/webhook", {"action": "PROJECT_UPDATED", "project": {"id": pid}})
        assert ignored[0] == 200 and ignored[1]["status"] == "ignored"
        code, health, _ = _post(server.url + "/webhook", {"action": "START_TRAINING", "project": {"id": pid + 1000}})
        assert code == 200 and health["reason"] == "another project"

        deadline = time.monotonic() + 420
        while backend.early.status()["started"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        early = backend.early.status()
        assert early["started"] >= 1 and early["last_how"] == "local", early
        assert backend.early.close(wait_seconds=max(1.0, deadline - time.monotonic())) is None  # the run ended
        assert backend.early.status()["history"][0]["exit_code"] == 0
        assert len(svc.tracker.list_runs(cfg.name, "decision")) > decisions_before  # the early run decided
        with get_client(sync_client=True) as client:
            flow_runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[EARLY_RUN_TAG]))
            )
        mine = [r for r in flow_runs if (r.parameters or {}).get("project") == cfg.name]
        assert mine and mine[0].state.is_completed()

        import httpx

        health = httpx.get(server.url + "/health", timeout=5).json()
        assert health["status"] == "UP" and health["model_class"] == MODEL_CLASS
        print(
            f"retrieve 11 predictions through Label Studio: {retrieve_s:.2f} s; annotation + webhook: "
            f"{annotate_s:.2f} s; direct webhook calls: max {max(t for _, _, t in burst) * 1000:.0f} ms"
        )
        proto.disconnect_backend(svc.ls, info.id)
        assert proto.list_backends(svc.ls, pid) == []
    finally:
        server.stop()
        backend.early.close()


def test_with_a_served_deployment_a_burst_creates_one_pending_flow_run(prefect_harness):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from flows.loop import loop_iteration
    from flows.serve import deployment_name
    from flows.webhook import EARLY_RUN_TAG, EarlyRuns

    project = f"dep-{uuid.uuid4().hex[:8]}"
    deployment_id = loop_iteration.to_deployment(
        name=deployment_name(project), parameters={"project": project}, concurrency_limit=1
    ).apply()
    early = EarlyRuns(project, mode="auto")
    assert [early.request("ANNOTATION_CREATED")["status"] for _ in range(3)] == ["scheduled"] + ["coalesced"] * 2
    deadline = time.monotonic() + 60
    while early.status()["started"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert early.status()["last_how"] == "deployment"
    early.request("ANNOTATION_UPDATED")  # the created run has not started (nothing serves it): folded into it
    deadline = time.monotonic() + 30
    while early.status()["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    assert len(runs) == 1 and EARLY_RUN_TAG in runs[0].tags and runs[0].state.is_scheduled()
    status = early.status()
    assert status["started"] == 1 and status["coalesced"] == 3 and status["failed"] == 0
    early.close()


# ----------------------------------------------------------------------------- the command


def test_the_help_teaches_how_to_connect_and_what_each_endpoint_does(capsys):
    from app.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["ml-backend", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for needle in ("Settings -> Model", "--connect", "/health", "/setup", "/predict", "/webhook", "START_TRAINING"):
        assert needle in text, needle
    assert "source of truth" in text and "ML_BLOCK_LOCAL_IP=false" in text
    assert "--predict-budget" in text and "ML_TIMEOUT_PREDICT" in text


def test_an_unknown_project_is_one_error_line(capsys, tmp_path, monkeypatch):
    from app.cli import main

    monkeypatch.setenv("DATAEFF_HOME", str(tmp_path))
    code = main(["ml-backend", "--project", "no-such-project", "--port", "9"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "no-such-project" in err and "Traceback" not in err
    code = main(["ml-backend", "--project", "no-such-project", "--port", "9", "--predict-budget", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--predict-budget 0.0: give a positive number" in err and "Traceback" not in err


def test_the_command_serves_and_connects_itself(make_project, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys

    from fixtures_projects import pool_of
    from fixtures_projects import services as _services

    from integrations.ls_server import free_port

    pool, _ = pool_of(12)
    cfg, home = make_project(pool, prefix="mlc")
    port = free_port()
    log_path = tmp_path / "ml-backend.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "ml-backend", "--project", cfg.name, "--port", str(port), "--connect"],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=dict(os.environ),
        )
        try:
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
            reader.start()
            deadline = time.monotonic() + 240
            while "}\n" not in lines and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert "}\n" in lines, (proc.poll(), lines, log_path.read_text()[-3000:])
            out = json.loads("".join(lines[: lines.index("}\n") + 1]))  # stdout is the JSON alone (logs: stderr)
            assert out["url"] == f"http://127.0.0.1:{port}" and out["project"] == cfg.name
            assert out["connected"]["state"] == "Connected" and out["connected"]["webhook"] is True
            (listed,) = proto.list_backends(_services(cfg).ls, cfg.label_studio_project_id)
            assert listed.connected and listed.url == out["url"] and listed.model_version == out["model_version"]
            proc.send_signal(signal.SIGINT)  # Ctrl-C: stops serving, exit status 0
            assert proc.wait(timeout=120) == 0  # a loaded 2-core CI machine is slow to shut uvicorn down
        finally:
            if proc.poll() is None:
                proc.kill()
