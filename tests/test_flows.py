"""Prefect flows end to end: real Label Studio server, real MLflow (SQLite), Prefect test harness, tiny model."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid

import pytest
from fixtures_projects import annotator as _annotator
from fixtures_projects import run_count as _run_count
from fixtures_projects import services as _services


def test_full_iteration_end_to_end_and_idempotent_rerun(flow_project):
    from flows.bootstrap import bootstrap
    from flows.loop import loop_iteration

    cfg, gold, home = flow_project
    boot = bootstrap(cfg.name, home=str(home))
    assert boot["lowconf"] == 4 and boot["eval"] == 8
    svc = _services(cfg)
    roles = svc.tracker.read_bootstrap(cfg.name, cfg.model)
    assert not set(roles["lowconf"]) & set(roles["eval"])
    # every other item waits below the requests, in the order the loop will request pool items
    waiting = {t.dataeff_id: t.data["dataeff_priority"] for t in svc.ls.tasks(cfg.label_studio_project_id)}
    waiting = {i: p for i, p in waiting.items() if i not in set(roles["lowconf"]) | set(roles["eval"])}
    assert len(waiting) == 60 - 12 and all(p < 0 for p in waiting.values())
    waiting_order = sorted(waiting, key=lambda i: -waiting[i])
    annotator = _annotator(cfg, gold)
    assert annotator.label_requested() == 12  # the low-confidence batch, then the eval split

    first = loop_iteration(cfg.name, home=str(home))
    assert -1 <= first["coslow"]["coslow"] <= 1 and math.isfinite(first["coslow"]["coslow"])
    assert set(first["measured"]) == {"0"}  # zero-shot on the eval split; 4 training labels cover no budget yet
    decision = first["decision"]
    assert decision["action"] == "request_labels" and 5 <= decision["n_labels"] <= 10
    assert first["requested"] >= decision["n_labels"]
    assert svc.ls.get_status(cfg.label_studio_project_id) == decision["status_text"]
    kinds = {r["kind"] for r in svc.tracker.list_runs(cfg.name)}
    assert {"bootstrap", "estimate", "finetune", "decision"} <= kinds

    # the loop asked for exactly the first items of that waiting order
    asked = {t.dataeff_id for t in svc.ls.tasks(cfg.label_studio_project_id) if t.data["dataeff_priority"] > 0}
    assert asked - set(roles["lowconf"]) - set(roles["eval"]) == set(waiting_order[: first["requested"]])
    assert annotator.label_requested() == first["requested"]
    second = loop_iteration(cfg.name, home=str(home))
    assert "10" in second["measured"] and second["assessment"]["source"] == "posterior"
    assert 0 <= second["measured"]["10"] <= 1
    _check_what_an_ml_lead_sees(cfg, first, second)

    runs_before = _run_count(cfg)
    third = loop_iteration(cfg.name, home=str(home))  # same labels: nothing new anywhere
    assert third["new_runs"] == 0 and third["finetuned_now"] == []
    assert _run_count(cfg) == runs_before
    assert third["decision"] == second["decision"]


def _check_what_an_ml_lead_sees(cfg, first: dict, second: dict) -> None:
    """The MLflow store after two iterations, read back with MlflowClient (issue 12, MLflow part)."""
    from mlflow import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.name)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on runs, not traces
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time"])
    by_kind: dict[str, list] = {}
    for run in runs:
        by_kind.setdefault(run.data.tags["dataeff.kind"], []).append(run)

    # real durations: each fine-tune / estimate run spans the seconds it measured
    finetunes = {int(r.data.tags["dataeff.budget"]): r for r in by_kind["finetune"]}
    assert set(finetunes) == {0, 10}
    estimate = by_kind["estimate"][0]
    for run in [*finetunes.values(), estimate]:
        duration_ms = run.info.end_time - run.info.start_time
        assert abs(duration_ms - run.data.metrics["seconds"] * 1000) <= 5, (run.info.run_name, duration_ms)
        assert run.data.metrics["seconds"] > 0

    # labels needed: whole labels, the same on the estimate and the decision of the iteration that wrote it
    needs = {k: v for k, v in estimate.data.metrics.items() if k.startswith("labels_needed_")}
    assert needs and all(v == math.ceil(v) for v in needs.values())
    first_decision = by_kind["decision"][0]
    assert {k: first_decision.data.metrics[k] for k in needs} == needs
    for t, need in first["assessment"]["labels_needed"].items():
        if f"labels_needed_{t}" in needs and need["median"] is not None:
            assert needs[f"labels_needed_{t}"] == need["median"]
    assert first_decision.data.tags["dataeff.labels_needed_from"] == first["assessment"]["source"]

    # estimate vs actual: the budget-10 run has the score predicted for it before it was measured ...
    m10 = finetunes[10].data.metrics
    assert m10["score"] == pytest.approx(second["measured"]["10"])
    assert 0 <= m10["predicted_score_lo"] <= m10["predicted_score"] <= m10["predicted_score_hi"] <= 1
    assert "predicted_score" not in finetunes[0].data.metrics  # the zero-shot is the measured anchor
    # ... and the summary run holds both as step metrics, step = labels (MLflow's chart view draws them)
    summary = by_kind["summary"][0].info.run_id

    def history(name: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(summary, name)}

    assert history("measured_score") == pytest.approx({int(b): s for b, s in second["measured"].items()})
    assert history("predicted_score") == pytest.approx({10: m10["predicted_score"]})
    assert history("predicted_score_lo") == pytest.approx({10: m10["predicted_score_lo"]})
    assert history("predicted_score_hi") == pytest.approx({10: m10["predicted_score_hi"]})

    # one parent run per iteration: the estimate, fine-tunes and decision of each nested under it
    parents = by_kind["iteration"]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert [p.data.metrics["labeled"] for p in parents] == [first["labeled"], second["labeled"]]
    nested = {
        pid: sorted(r.data.tags["dataeff.kind"] for r in runs if r.data.tags.get("mlflow.parentRunId") == pid)
        for pid in (p.info.run_id for p in parents)
    }
    assert list(nested.values()) == [["decision", "estimate", "finetune"], ["decision", "finetune"]]
    # dataset inputs keyed by the label-set hash of exactly the rows used
    inputs = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
        for i in finetunes[10].inputs.dataset_inputs
    }
    assert set(inputs) == {"training", "eval"}
    assert json.loads(inputs["training"].profile) == {"num_rows": 10}
    assert inputs["training"].name == f"{cfg.name}-train"
    low = estimate.inputs.dataset_inputs
    assert [(i.dataset.name, json.loads(i.dataset.profile)["num_rows"]) for i in low] == [(f"{cfg.name}-lowconf", 4)]
    # system metrics sampled while the fine-tune ran (before its run was written)
    cpu = client.get_metric_history(finetunes[10].info.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 2
    assert all(m.timestamp <= finetunes[10].info.end_time for m in cpu)


def test_overlapping_runs_of_one_project_wait_for_each_other(prefect_harness):
    from flows.locks import project_slot

    project = f"lock-{uuid.uuid4().hex[:8]}"
    events: dict[str, float] = {}
    holding = threading.Event()

    def first_run():
        with project_slot(project, timeout_seconds=30):
            events["a_in"] = time.monotonic()
            holding.set()
            time.sleep(4)
            events["a_out"] = time.monotonic()

    t = threading.Thread(target=first_run)
    t.start()
    assert holding.wait(60)
    with pytest.raises(TimeoutError):
        with project_slot(project, timeout_seconds=1):
            pass
    with project_slot(project, timeout_seconds=60):  # waits until the first run is done
        events["b_in"] = time.monotonic()
    t.join()
    assert events["b_in"] >= events["a_out"]


def test_two_overlapping_iterations_write_each_run_once(flow_project):
    from flows.bootstrap import bootstrap
    from flows.loop import loop_iteration

    cfg, gold, home = flow_project
    bootstrap(cfg.name, home=str(home))
    _annotator(cfg, gold).label_requested()
    results, errors = [], []

    def run():
        try:
            results.append(loop_iteration(cfg.name, home=str(home)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len(results) == 2 and results[0]["decision"] == results[1]["decision"]
    assert sorted(r["new_runs"] for r in results)[0] == 0  # the second found everything already logged
    runs = _services(cfg).tracker.list_runs(cfg.name)
    keys = [(r["kind"], r.get("budget"), r.get("label_hash")) for r in runs if r["kind"] in ("estimate", "finetune")]
    assert len(keys) == len(set(keys))


def test_label_studio_down_during_an_iteration_is_retried_and_loses_nothing(flow_project, label_studio):
    from flows.bootstrap import bootstrap
    from flows.loop import loop_iteration

    cfg, gold, home = flow_project
    bootstrap(cfg.name, home=str(home))
    labeled = _annotator(cfg, gold).label_requested()
    label_studio.stop()
    restart = threading.Timer(2.0, lambda: label_studio.start(timeout=180))
    restart.start()
    try:
        summary = loop_iteration(cfg.name, home=str(home))
    finally:
        restart.join()
    assert summary["labeled"] == labeled  # every label made it through the outage
    assert summary["coslow"] is not None


def test_malformed_annotation_is_reported_and_the_rest_processed(flow_project):
    from flows.bootstrap import bootstrap
    from flows.loop import loop_iteration

    cfg, gold, home = flow_project
    bootstrap(cfg.name, home=str(home))
    labeled = _annotator(cfg, gold).label_requested()
    svc = _services(cfg)
    roles = svc.tracker.read_bootstrap(cfg.name, cfg.model)
    reserved = set(roles["lowconf"]) | set(roles["eval"])
    victim = next(t for t in svc.ls.tasks(cfg.label_studio_project_id) if t.dataeff_id not in reserved)
    # Written behind dataeff's back (another tool, an old label set): a label not in the config.
    svc.ls._sdk.annotations.create(
        id=victim.task_id,
        result=[{"from_name": "answer", "to_name": "prompt", "type": "choices", "value": {"choices": ["maybe"]}}],
    )
    summary = loop_iteration(cfg.name, home=str(home))
    assert [e["dataeff_id"] for e in summary["errors"]] == [victim.dataeff_id]
    assert "maybe" in summary["errors"][0]["reason"]
    assert summary["labeled"] == labeled and summary["coslow"] is not None
