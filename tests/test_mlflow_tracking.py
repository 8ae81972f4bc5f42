"""integrations.mlflow_tracking against a real SQLite store and a real `mlflow server` on Postgres."""

from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from dataeff.confidence import ConfidenceScore  # noqa: E402
from dataeff.coslow import CosLowResult  # noqa: E402
from dataeff.data import Example  # noqa: E402
from dataeff.efficiency import LabelsNeeded, Prediction, predict, target_key  # noqa: E402
from dataeff.errors import DataError  # noqa: E402
from dataeff.finetune import FinetuneResult, FinetuneSettings  # noqa: E402
from dataeff.iteration import label_set_hash  # noqa: E402
from dataeff.models import LoraSettings  # noqa: E402
from dataeff.policy import Decision  # noqa: E402
from integrations import secrets  # noqa: E402
from integrations.mlflow_schema import KIND_BY_NAME, matches  # noqa: E402
from integrations.mlflow_tracking import (  # noqa: E402
    COMPARISON_FIGURE,
    TAG_ABANDONED_BY,
    TAG_RUN_KEY,
    Tracker,
    TrackingError,
)

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(params=["sqlite", "server"])
def store_uri(request) -> str:
    """The tracking URI of each real store in turn."""
    name = "mlflow_sqlite_uri" if request.param == "sqlite" else "mlflow_server_uri"
    return request.getfixturevalue(name)


@pytest.fixture
def tracker(store_uri) -> Tracker:
    return Tracker(store_uri)


@pytest.fixture
def project() -> str:
    return f"proj-{uuid.uuid4().hex[:8]}"


def _labels(n: int = 32, flip: int | None = None) -> list[Example]:
    return [Example(prompt=f"q{i}", answer=("yes" if (i % 2) ^ (i == flip) else "no"), id=f"t{i}") for i in range(n)]


TARGETS = (0.8, 0.9)


def _coslow(**changes) -> CosLowResult:
    result = CosLowResult(
        coslow=0.65,
        draws=[0.63, 0.66, 0.66],
        mean=0.65,
        std=0.02,
        n_examples=32,
        seconds=4.0,
        lora=LoraSettings(r=8, alpha=16).as_dict(),
        seed=0,
        chat_template=True,
    )
    return replace(result, **changes)


def _prediction(family: str = "llama") -> Prediction:
    pred = predict(0.65, 0.545, 0.310, TARGETS, auc_interval=(0.58, 0.74))
    return replace(pred, extra={"calibration": family})


def _finetune(budget: int = 50, score: float = 0.31, **changes) -> FinetuneResult:
    """A fine-tune result: 10 s of training + 2.5 s of evaluation, LoRA r=4."""
    settings = FinetuneSettings(lora=LoraSettings(r=4, alpha=8), lr=2e-4, epochs=3)
    result = FinetuneResult(
        budget=budget,
        score=score,
        zero_shot=budget == 0,
        n_train=budget,
        n_eval=200,
        seconds_train=10.0,
        seconds_eval=2.5,
        adapter_dir=None,
        settings=settings.as_dict(),
    )
    return replace(result, **changes)


def _decision(**changes) -> Decision:
    decision = Decision(
        action="request_labels",
        n_labels=100,
        budget=None,
        reason="predicted 900 labels for target 0.9",
        status_text="about 420 more labels to reach 90% of the achievable gain",
        rule="request_more",
    )
    return replace(decision, **changes)


def _needs() -> dict[float, LabelsNeeded]:
    """Labels needed of an assessment (fractional, as the posterior gives them; 0.9 never within the cutoff)."""
    return {
        0.8: LabelsNeeded(0.8, 975.8402846441705, 612.2, 1409.01),
        0.9: LabelsNeeded(0.9, 2300.5, 1500.0, math.inf),
    }


def _figure(points: dict[int, float] | None = None):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 50, 100, 200], [0.1, 0.3, 0.5, 0.6], label="predicted")
    if points:
        ax.scatter(list(points), list(points.values()), label="actual")
    ax.set_xlabel("labels")
    return fig


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A real peft adapter folder (save_pretrained of a LoRA on the tiny Llama), loaded privately."""
    from dataeff.models import attach_lora, load_model

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="fp32")
    peft_model = attach_lora(loaded.model, LoraSettings(r=4, alpha=8), seed=0)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


# --------------------------------------------------------------------------- pure helpers


def test_label_set_hash_is_order_free_and_sensitive_to_answers():
    a = _labels()
    assert label_set_hash(a) == label_set_hash(list(reversed(a)))
    assert label_set_hash(a) == label_set_hash([(e.id, e.answer) for e in a])
    assert label_set_hash(a) != label_set_hash(_labels(flip=3))
    assert label_set_hash(a) != label_set_hash(a[:-1])
    with pytest.raises(DataError, match="id 't1'.*no answer"):
        label_set_hash([Example("q", "a", id="t0"), Example("q", None, id="t1")])


def test_file_store_uri_is_refused(tmp_path):
    with pytest.raises(DataError, match="file store is not supported"):
        Tracker(str(tmp_path / "mlruns"))


def test_redact_covers_keys_uris_and_registered_values():
    secrets.register_secret("registered-value-42")
    out = secrets.redact(
        {
            "LS_API_TOKEN": "abc",
            "max_new_tokens": 30,
            "dbPassword": "pw",
            "dsn": "postgresql://me:pgpass@db:5432/x",
            "url": "postgresql://me:pgpass@db:5432/x?sslmode=require",
            "note": ["say registered-value-42 twice"],
        }
    )
    assert out == {
        "LS_API_TOKEN": "***",
        "max_new_tokens": 30,
        "dbPassword": "***",
        "dsn": "***",
        "url": "postgresql://me:***@db:5432/x?sslmode=require",
        "note": ["say *** twice"],
    }
    assert secrets.redact_text("http://h/x?access_token=zz&page=2") == "http://h/x?access_token=***&page=2"
    with pytest.raises(ValueError, match="too short"):
        secrets.register_secret("ab")


def test_unreachable_server_error_names_no_secret(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tracker = Tracker(f"http://dataeff:unreachable-secret-9@127.0.0.1:{port}")
    assert "unreachable-secret-9" not in repr(tracker)
    with pytest.raises(TrackingError) as info:
        tracker.experiment_for("p")
    assert "unreachable-secret-9" not in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_dataeff_result_objects_map_to_the_schema(mlflow_sqlite_uri, project, adapter_dir):
    """The dataclasses of dataeff.coslow and dataeff.finetune log under the documented names."""
    from dataeff.coslow import CosLowResult
    from dataeff.finetune import FinetuneResult, FinetuneSettings

    tracker = Tracker(mlflow_sqlite_uri)
    h = label_set_hash(_labels())
    cos = CosLowResult(
        coslow=0.41,
        draws=[0.40, 0.42],
        mean=0.41,
        std=0.01,
        n_examples=32,
        seconds=3.5,
        lora=LoraSettings().as_dict(),
        seed=7,
        chat_template=True,
    )
    est = tracker.log_estimate(project, "smollm2", h, cos, _prediction(), TARGETS)
    run = MlflowClient(mlflow_sqlite_uri).get_run(est.run_id)
    assert run.data.params["draws"] == "2" and run.data.params["seed"] == "7" and run.data.params["lora_r"] == "64"
    assert run.data.metrics["coslow_std"] == pytest.approx(0.01)
    assert run.data.metrics["coslow_draw_1"] == pytest.approx(0.42)

    settings = FinetuneSettings(lr=1e-4, epochs=2, seed=3)
    ft = FinetuneResult(
        budget=50,
        score=0.375,
        zero_shot=False,
        n_train=50,
        n_eval=40,
        seconds_train=20.0,
        seconds_eval=5.0,
        adapter_dir=str(adapter_dir),
        settings=settings.as_dict(),
        steps=7,
        final_loss=0.9,
    )
    logged = tracker.log_finetune(project, "smollm2", h, ft)
    run = MlflowClient(mlflow_sqlite_uri).get_run(logged.run_id)
    assert run.data.params["lr"] == "0.0001" and run.data.params["epochs"] == "2" and run.data.params["seed"] == "3"
    assert run.data.params["lora_r"] == "8" and run.data.params["n_eval"] == "40"
    assert run.data.metrics["seconds"] == 25.0 and run.data.metrics["train_loss"] == pytest.approx(0.9)
    names = {f.path for f in MlflowClient(mlflow_sqlite_uri).list_artifacts(logged.run_id, "adapter")}
    assert "adapter/adapter_config.json" in names  # taken from result.adapter_dir


def test_runs_write_only_what_the_schema_declares(mlflow_sqlite_uri, project, adapter_dir):
    """Every param, metric and artifact of every kind is one the table of integrations.mlflow_schema names."""
    tracker = Tracker(mlflow_sqlite_uri)
    h = label_set_hash(_labels())
    scores = [ConfidenceScore(id="t0", answer="No.", confidence=0.12, perplexity=0.5, n_tokens=3)]
    tracker.log_bootstrap(project, "m", {"lowconf": ["t0"]}, {"pool": 1}, scores, figure=_figure())
    tracker.log_estimate(project, "m", h, _coslow(), _prediction(), TARGETS, figure=_figure(), tables={"t": [{"a": 1}]})
    ft = tracker.log_finetune(project, "m", h, _finetune(adapter_dir=str(adapter_dir), final_loss=0.5, steps=3))
    tracker.log_predicted(ft.run_id, 0.3, 0.2, 0.4)
    tracker.begin_iteration(project, "m", "it-key", labeled=33)
    tracker.log_decision(project, "it", _decision(), model="m", summary={}, needs=_needs(), needs_from="posterior")
    tracker.end_iteration(project, {"labeled": 33, "new_runs": 1, "n_labels": 100})
    tracker.log_calibration(f"fam-{project}", {"coef": 0.5, "intercept": 0.3, "loo_mae": 0.1, "tasks": ["a"]})
    tracker.log_cursor(project, {"x": 1})
    tracker.update_comparison(
        project, _figure(), [{"budget": 0, "actual": 0.2}], measured={0: 0.2, 50: 0.3}, predicted={50: (0.3, 0.2, 0.4)}
    )
    plt.close("all")

    client = MlflowClient(mlflow_sqlite_uri)
    seen = set()
    for experiment in (project, tracker.calibration_experiment):
        for run in client.search_runs([client.get_experiment_by_name(experiment).experiment_id]):
            kind = KIND_BY_NAME[run.data.tags["dataeff.kind"]]
            if kind.name == "calibration" and run.data.tags["dataeff.family"] != f"fam-{project}":
                continue
            seen.add(kind.name)
            assert run.data.tags[TAG_RUN_KEY] and run.info.run_name
            assert [p for p in run.data.params if not matches(p, kind.params)] == [], kind.name
            assert [m for m in run.data.metrics if not matches(m, kind.metrics)] == [], kind.name
            files = _all_artifact_files(client, run.info.run_id)
            assert bool(files) == bool(kind.artifacts), kind.name  # an iteration parent has no files
            assert [f for f in files if not matches(f, kind.artifacts)] == [], kind.name
    assert seen == set(KIND_BY_NAME)


# --------------------------------------------------------------------------- both stores


def test_estimate_is_idempotent_and_read_back(tracker, project, tmp_path):
    labels = label_set_hash(_labels())
    fig = _figure()
    first = tracker.log_estimate(
        project,
        "smollm2",
        labels,
        _coslow(),
        _prediction(),
        TARGETS,
        figure=fig,
        tables={"per draw": [{"draw": i, "coslow": c} for i, c in enumerate([0.63, 0.66, 0.66])]},
    )
    again = tracker.log_estimate(project, "smollm2", labels, _coslow(), _prediction(), TARGETS, figure=fig)
    plt.close(fig)
    assert first.created and not again.created
    assert again.run_id == first.run_id
    assert len(tracker.list_runs(project, "estimate", include_unfinished=True)) == 1

    est = tracker.latest_estimate(project, "smollm2")
    assert est["run_id"] == first.run_id and est["label_hash"] == labels
    m, p = est["metrics"], est["params"]
    pred, need = _prediction(), _prediction().need(0.9)
    assert m["coslow"] == pytest.approx(0.65) and m["predicted_auc"] == pytest.approx(pred.auc)
    assert (m["auc_lo"], m["auc_hi"]) == pytest.approx((0.58, 0.74))
    assert m["coslow_std"] == pytest.approx(0.02) and m["coslow_draw_2"] == pytest.approx(0.66)
    # whole labels, rounded up (the prediction's own numbers are fractional)
    assert need.median != math.ceil(need.median)
    assert (m["labels_needed_0.9"], m["labels_needed_0.9_lo"], m["labels_needed_0.9_hi"]) == (
        math.ceil(need.median),
        math.ceil(need.lo),
        math.ceil(need.hi),
    )
    assert p["lora_r"] == "8" and p["lora_alpha"] == "16" and p["draws"] == "3" and p["chat_template"] == "True"
    assert p["calibration_family"] == "llama" and float(p["calibration_coef"]) == 0.545
    assert "q_proj" in p["lora_targets"]
    assert est["prediction"]["targets"]["0.9"]["hi"] == pytest.approx(need.hi)
    assert est["coslow_result"] == _coslow().as_dict()
    assert tracker.for_project(project, "smollm2").stored_coslow(labels) == _coslow()
    assert tracker.for_project(project, "smollm2").stored_coslow(label_set_hash(_labels(flip=2))) is None
    assert tracker.latest_estimate(project, "other-model") is None

    table = json.loads(tracker.download_artifact(first.run_id, "labels_needed.json", tmp_path).read_text())
    assert table["columns"] == ["target", "labels_needed", "lo", "hi"]
    assert [row[0] for row in table["data"]] == [target_key(t) for t in TARGETS]
    for row, t in zip(table["data"], TARGETS):
        n = pred.need(t)
        assert row[1:] == [math.ceil(n.median), math.ceil(n.lo), math.ceil(n.hi)]
    png = tracker.download_artifact(first.run_id, "predicted_curve.png", tmp_path).read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert tracker.download_artifact(first.run_id, "tables/per_draw.json", tmp_path).exists()

    # new labels -> a new estimate, and it becomes the latest
    second = tracker.log_estimate(
        project, "smollm2", label_set_hash(_labels(flip=5)), _coslow(coslow=0.5), _prediction(), TARGETS
    )
    assert second.created and second.run_id != first.run_id
    assert tracker.latest_estimate(project, "smollm2")["metrics"]["coslow"] == pytest.approx(0.5)


def test_bootstrap_roles_are_fixed_once(tracker, project, tmp_path):
    assert tracker.read_bootstrap(project, "smollm2") is None
    roles = {"lowconf": [f"t{i}" for i in range(32)], "eval": ["e1", "e2"]}
    scores = [ConfidenceScore(id="t0", answer="No.", confidence=0.12, perplexity=float("inf"), n_tokens=3)]
    first = tracker.log_bootstrap(
        project, "smollm2", roles, {"pool": 320, "mean_confidence": 0.41}, scores, figure=_figure()
    )
    plt.close("all")
    redrawn = tracker.log_bootstrap(project, "smollm2", {"lowconf": ["x"], "eval": ["y"]}, {"pool": 320})
    assert first.created and not redrawn.created and redrawn.run_id == first.run_id
    assert tracker.read_bootstrap(project, "smollm2") == roles
    assert tracker.read_bootstrap(project, "other-model") is None
    run = tracker.list_runs(project, "bootstrap")[0]
    assert run["params"] == {"n_lowconf": "32", "n_eval": "2", "n_pool": "320"}
    assert run["metrics"]["mean_confidence"] == pytest.approx(0.41)
    table = tracker.download_artifact(first.run_id, "confidence.csv", tmp_path).read_text().splitlines()
    assert table == ["id,answer,confidence,perplexity,n_tokens", "t0,No.,0.12,inf,3"]
    with pytest.raises(DataError, match="roles must be"):
        tracker.log_bootstrap(project, "m2", {}, {})


def test_finetune_points_and_adapter(tracker, project, adapter_dir, tmp_path):
    h50, h100 = label_set_hash(_labels(50)), label_set_hash(_labels(100))
    r50 = tracker.log_finetune(project, "smollm2", h50, _finetune(50, 0.31), adapter_dir=adapter_dir)
    assert tracker.log_finetune(project, "smollm2", h50, _finetune(50, 0.31)).run_id == r50.run_id
    tracker.log_finetune(project, "smollm2", h100, _finetune(100, 0.42))
    tracker.log_finetune(project, "other", h100, _finetune(100, 0.99))
    assert tracker.finetuned_budgets(project, "smollm2") == {50: pytest.approx(0.31), 100: pytest.approx(0.42)}
    # a later fine-tune at the same budget on other labels replaces the point (latest wins)
    tracker.log_finetune(project, "smollm2", label_set_hash(_labels(100, flip=1)), _finetune(100, 0.45))
    assert tracker.finetuned_budgets(project, "smollm2") == {50: pytest.approx(0.31), 100: pytest.approx(0.45)}
    assert len(tracker.list_runs(project, "finetune")) == 4

    run = MlflowClient(tracker.tracking_uri).get_run(r50.run_id)
    assert run.data.params["budget"] == "50" and run.data.params["lr"] == "0.0002" and run.data.params["lora_r"] == "4"
    assert run.data.metrics["score"] == pytest.approx(0.31) and run.data.metrics["seconds"] == 12.5
    cfg = tracker.download_artifact(r50.run_id, "adapter/adapter_config.json", tmp_path)
    assert json.loads(cfg.read_text())["r"] == 4
    names = {Path(f.path).name for f in MlflowClient(tracker.tracking_uri).list_artifacts(r50.run_id, "adapter")}
    assert "adapter_model.safetensors" in names

    with pytest.raises(DataError, match="budget must be"):
        tracker.log_finetune(project, "smollm2", h50, _finetune(-1, 0.1))
    with pytest.raises(DataError, match="no numeric 'score'"):
        tracker.log_finetune(project, "smollm2", h50, _finetune(200, float("nan")))


def test_decision_and_calibration(tracker, project, tmp_path):
    dec = _decision()
    d1 = tracker.log_decision(project, "iter-abc", dec, summary={"labeled": 40})
    d2 = tracker.log_decision(project, "iter-abc", dec)
    assert d1.created and not d2.created and d1.run_id == d2.run_id
    tracker.log_decision(project, "iter-def", _decision(action="stop", n_labels=0, budget=50))
    runs = tracker.list_runs(project, "decision")
    assert [r["tags"]["dataeff.action"] for r in runs] == ["stop", "request_labels"]
    assert runs[0]["params"]["budget"] == "50" and runs[0]["tags"]["dataeff.budget"] == "50"
    first = runs[1]
    assert first["params"]["n_labels"] == "100" and first["metrics"]["n_labels"] == 100
    assert first["tags"]["dataeff.reason"] == dec.reason and first["run_name"] == "decision-request_labels"
    text = tracker.download_artifact(d1.run_id, "decision.txt", tmp_path).read_text()
    assert dec.status_text in text and dec.reason in text
    stored = json.loads(tracker.download_artifact(d1.run_id, "decision.json", tmp_path).read_text())
    assert stored == {**dec.as_dict(), "summary": {"labeled": 40}}

    family = f"fam-{uuid.uuid4().hex[:6]}"
    assert tracker.latest_calibration(family) is None
    cal = {
        "coef": 0.545,
        "intercept": 0.31,
        "loo_mae": 0.086,
        "baseline_mae": 0.125,
        "n_tasks": 30,
        "tasks": ["a", "b"],
    }
    c1 = tracker.log_calibration(family, cal)
    assert not tracker.log_calibration(family, cal).created
    got = tracker.latest_calibration(family)
    assert got["run_id"] == c1.run_id and got["coef"] == 0.545 and got["tasks"] == ["a", "b"]
    c2 = tracker.log_calibration(family, {**cal, "coef": 0.6})
    assert c2.created and tracker.latest_calibration(family)["coef"] == 0.6


def test_failed_and_crashed_runs_are_not_taken_as_done(tracker, project, store_uri):
    h = label_set_hash(_labels())

    bad_tables = {"t": object()}  # not a table: fails while writing artifacts
    with pytest.raises(DataError):
        tracker.log_estimate(project, "m", h, _coslow(), _prediction(), TARGETS, tables=bad_tables)
    failed = tracker.list_runs(project, "estimate", include_unfinished=True)
    assert [r["status"] for r in failed] == ["FAILED"]

    # a process that dies mid-run (hard exit while writing artifacts) leaves a RUNNING run
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from mlflow import MlflowClient
        from dataeff.finetune import FinetuneResult, FinetuneSettings
        from integrations.mlflow_tracking import Tracker
        MlflowClient.log_dict = lambda *a, **k: os._exit(3)
        result = FinetuneResult(50, 0.3, False, 50, 10, 1.0, 1.0, None, FinetuneSettings().as_dict())
        Tracker({store_uri!r}).log_finetune({project!r}, "m", {h!r}, result)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    crashed = tracker.list_runs(project, "finetune", include_unfinished=True)
    assert [r["status"] for r in crashed] == ["RUNNING"]
    assert tracker.finetuned_budgets(project, "m") == {}

    done = tracker.log_finetune(project, "m", h, _finetune(50, 0.3))
    assert done.created
    runs = {r["run_id"]: r for r in tracker.list_runs(project, "finetune", include_unfinished=True)}
    assert runs[crashed[0]["run_id"]]["status"] == "FAILED"
    assert runs[crashed[0]["run_id"]]["tags"][TAG_ABANDONED_BY] == done.run_id
    assert runs[done.run_id]["status"] == "FINISHED"
    assert runs[done.run_id]["tags"][TAG_RUN_KEY] == crashed[0]["tags"][TAG_RUN_KEY]
    assert tracker.finetuned_budgets(project, "m") == {50: pytest.approx(0.3)}

    est = tracker.log_estimate(project, "m", h, _coslow(), _prediction(), TARGETS)
    assert est.created and est.run_id != failed[0]["run_id"]


def test_cursor_round_trip(tracker, project):
    assert tracker.read_cursor(project) is None
    c1 = {"updated_at": "2026-11-02T10:00:00Z", "seen": {"t1": 11, "t2": 12}}
    run_id = tracker.log_cursor(project, c1)
    assert tracker.read_cursor(project) == c1
    c2 = {"updated_at": "2026-11-02T10:15:00Z", "seen": {"t1": 11}}
    assert tracker.log_cursor(project, c2) == run_id
    assert Tracker(tracker.tracking_uri).read_cursor(project) == c2  # a fresh process sees it
    assert len(tracker.list_runs(project, "summary")) == 1
    with pytest.raises(DataError, match="cursor must be a dict"):
        tracker.log_cursor(project, ["not", "a", "dict"])


def test_comparison_figure_is_a_png_artifact_updated_in_place(tracker, project, tmp_path):
    fig = _figure({50: 0.3})
    run_id = tracker.update_comparison(project, fig, [{"budget": 50, "predicted": 0.33, "actual": 0.3}])
    plt.close(fig)
    fig = _figure({50: 0.3, 100: 0.45})
    rows = [
        {"budget": 50, "predicted": 0.33, "actual": 0.3},
        {"budget": 100, "predicted": 0.5, "lo": 0.4, "hi": 0.6, "actual": 0.45},
    ]
    assert tracker.update_comparison(project, fig, rows) == run_id
    plt.close(fig)
    assert tracker.log_cursor(project, {"x": 1}) == run_id  # cursor and comparison share the summary run
    png = tracker.download_artifact(run_id, COMPARISON_FIGURE, tmp_path / "a").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    csv_text = tracker.download_artifact(run_id, "comparison/table.csv", tmp_path / "b").read_text()
    assert csv_text.splitlines() == ["budget,predicted,actual,lo,hi", "50,0.33,0.3,,", "100,0.5,0.45,0.4,0.6"]
    artifacts = {f.path for f in MlflowClient(tracker.tracking_uri).list_artifacts(run_id, "comparison")}
    assert artifacts == {"comparison/curve.png", "comparison/table.csv", "comparison/table.json"}


def _all_artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    files = []
    for f in client.list_artifacts(run_id, path):
        files.extend(_all_artifact_files(client, run_id, f.path) if f.is_dir else [f.path])
    return files


def test_no_secret_reaches_mlflow_or_logs(store_uri, project, adapter_dir, tmp_path, caplog, capsys):
    s_track, s_key, s_uri, s_reg = (
        f"{name}-{uuid.uuid4().hex[:10]}" for name in ("TRACKPW", "KEYSECRET", "URISECRET", "REGSECRET")
    )
    uri = store_uri.replace("http://", f"http://dataeff:{s_track}@") if store_uri.startswith("http") else store_uri
    secrets.register_secret(s_reg)
    caplog.set_level(logging.DEBUG)
    tracker = Tracker(uri)
    assert s_track not in repr(tracker) and s_track not in tracker.display_uri

    leaky = {"api_token": s_key, "label_studio_url": f"http://annot:{s_uri}@ls:8080", "notes": f"token is {s_reg}"}
    h = label_set_hash(_labels())
    tracker.log_estimate(
        project,
        "smollm2",
        h,
        _coslow(skipped=[leaky], device=f"cuda {s_reg}"),
        _prediction(family=f"postgresql://u:{s_uri}@db/x"),
        TARGETS,
        figure=_figure(),
        tables={"config": [{"key": "dsn", "value": f"postgresql://u:{s_uri}@db/x"}]},
    )
    plt.close("all")
    adapter_copy = tmp_path / "adapter"
    shutil.copytree(adapter_dir, adapter_copy)
    cfg = json.loads((adapter_copy / "adapter_config.json").read_text())
    cfg.update({"hub_token": s_key, "base_model_name_or_path": f"https://u:{s_uri}@hub/model"})
    (adapter_copy / "adapter_config.json").write_text(json.dumps(cfg))
    leaky_settings = FinetuneSettings(device=f"http://u:{s_uri}@gpu/x").as_dict()
    tracker.log_finetune(
        project, "smollm2", h, _finetune(settings=leaky_settings, dtype=f"fp32 {s_reg}"), adapter_dir=adapter_copy
    )
    tracker.log_decision(
        project, "it-1", _decision(reason=f"asked with {s_reg}", status_text=f"see http://x:{s_uri}@ls/")
    )
    tracker.log_calibration(
        f"fam-{project}", {"coef": 0.5, "intercept": 0.3, "source_dsn": f"postgresql://a:{s_uri}@b/c"}
    )
    tracker.log_cursor(project, {"since": "2026", "token": s_key, "url": f"http://x:{s_uri}@ls/"})
    tracker.update_comparison(project, _figure(), [{"budget": 50, "note": s_reg}])
    plt.close("all")

    client = MlflowClient(store_uri)
    seen: list[str] = []
    n_files = 0
    for exp_name in (project, tracker.calibration_experiment):
        exp = client.get_experiment_by_name(exp_name)
        seen.extend(f"{k}={v}" for k, v in exp.tags.items())
        for run in client.search_runs([exp.experiment_id]):
            seen.extend(f"{k}={v}" for k, v in run.data.params.items())
            seen.extend(f"{k}={v}" for k, v in run.data.tags.items())
            seen.extend(run.data.metrics)
            seen.append(run.info.run_name)
            for path in _all_artifact_files(client, run.info.run_id):
                local = Path(client.download_artifacts(run.info.run_id, path, str(tmp_path / "dl" / run.info.run_id)))
                seen.append(local.read_bytes().decode("utf-8", errors="replace"))
                n_files += 1
    assert n_files >= 12
    captured = capsys.readouterr()
    seen.extend([caplog.text, captured.out, captured.err])
    blob = "\n".join(seen)
    assert "***" in blob  # redaction happened (the values were there to leak)
    for secret in (s_track, s_key, s_uri, s_reg):
        assert secret not in blob, f"{secret.split('-')[0]} leaked"


# --------------------------------------------------------------------------- what an ML lead sees in the UI


def test_runs_written_after_the_work_span_its_real_duration(tracker, project):
    """A fine-tune (12.5 s) and a CoS-Low estimate (4 s) logged afterwards show their real durations."""
    client = MlflowClient(tracker.tracking_uri)
    ft = tracker.log_finetune(project, "m", label_set_hash(_labels()), _finetune(50, 0.31))
    est = tracker.log_estimate(project, "m", label_set_hash(_labels()), _coslow(seconds=4.0), _prediction(), TARGETS)
    for run_id, seconds in ((ft.run_id, 12.5), (est.run_id, 4.0)):
        info = client.get_run(run_id).info
        assert info.status == "FINISHED"
        assert abs((info.end_time - info.start_time) - seconds * 1000) <= 5, (info.start_time, info.end_time)
    run = client.get_run(ft.run_id)
    assert run.data.metrics["seconds"] == 12.5
    # the run ends when it was logged, i.e. it started seconds before
    assert abs(run.info.end_time - time.time() * 1000) < 120_000


def test_experiments_open_in_the_model_training_view(tracker, project):
    """MLflow 3's experiment type tag: ``custom_model_development`` (runs), not GenAI traces."""
    client = MlflowClient(tracker.tracking_uri)
    exp_id = tracker.experiment_for(project, "m")
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    study = tracker.study_experiment(f"study-{project}")
    assert client.get_experiment(study).tags["mlflow.experimentKind"] == "custom_model_development"
    tracker.log_calibration(f"fam-{project}", {"coef": 0.5, "intercept": 0.3})
    cal = client.get_experiment_by_name(tracker.calibration_experiment)
    assert cal.tags["mlflow.experimentKind"] == "custom_model_development"

    # an experiment made before (no kind) gets it; a kind chosen in the UI is kept
    old, chosen = f"old-{project}", f"chosen-{project}"
    client.create_experiment(old)
    client.set_experiment_tag(client.create_experiment(chosen), "mlflow.experimentKind", "genai_development")
    fresh = Tracker(tracker.tracking_uri)
    assert client.get_experiment(fresh.experiment_for(old)).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    assert client.get_experiment(fresh.experiment_for(chosen)).tags["mlflow.experimentKind"] == "genai_development"


def test_labels_needed_are_whole_and_the_same_on_estimate_and_decision(tracker, project):
    client = MlflowClient(tracker.tracking_uri)
    h = label_set_hash(_labels())
    needs = _needs()
    est = tracker.log_estimate(project, "m", h, _coslow(), _prediction(), TARGETS, needs=needs, needs_from="posterior")
    dec = tracker.log_decision(project, "it-1", _decision(), model="m", needs=needs, needs_from="posterior")
    e, d = client.get_run(est.run_id), client.get_run(dec.run_id)
    names = [f"labels_needed_{t}{s}" for t in ("0.8", "0.9") for s in ("", "_lo", "_hi")]
    got_e = {n: e.data.metrics[n] for n in names}
    got_d = {n: d.data.metrics[n] for n in names}
    assert got_e == got_d
    assert (got_e["labels_needed_0.8"], got_e["labels_needed_0.8_lo"], got_e["labels_needed_0.8_hi"]) == (
        976,
        613,
        1410,
    )
    assert got_e["labels_needed_0.9"] == 2301 and got_e["labels_needed_0.9_lo"] == 1500
    assert got_e["labels_needed_0.9_hi"] > 1e300  # never within the cutoff: MLflow stores inf as the float max
    assert e.data.tags["dataeff.labels_needed_from"] == d.data.tags["dataeff.labels_needed_from"] == "posterior"
    assert "target 0.8: 976 labels (613-1410)" in e.data.tags["mlflow.note.content"]
    # without an assessment the estimate still rounds the prediction's numbers
    other = tracker.log_estimate(project, "m", label_set_hash(_labels(flip=1)), _coslow(), _prediction(), TARGETS)
    m = client.get_run(other.run_id).data.metrics
    assert m["labels_needed_0.8"] == math.ceil(_prediction().need(0.8).median)
    assert client.get_run(other.run_id).data.tags["dataeff.labels_needed_from"] == "prediction"


def test_estimate_vs_actual_on_finetune_runs_and_as_summary_step_metrics(tracker, project):
    client = MlflowClient(tracker.tracking_uri)
    runs = {
        b: tracker.log_finetune(project, "m", label_set_hash(_labels(max(b, 1))), _finetune(b, s)).run_id
        for b, s in ((0, 0.12), (50, 0.31), (100, 0.42))
    }
    assert tracker.log_predicted(runs[50], 0.28, 0.2, 0.36) == {
        "predicted_score": 0.28,
        "predicted_score_lo": 0.2,
        "predicted_score_hi": 0.36,
    }
    assert tracker.log_predicted(runs[50], 0.5, 0.4, 0.6) == {}  # idempotent: the first prediction stays
    tracker.for_project(project, "m").log_predicted(runs[100], 0.45, 0.35, 0.52)
    m50 = client.get_run(runs[50]).data.metrics
    assert (m50["score"], m50["predicted_score"], m50["predicted_score_lo"], m50["predicted_score_hi"]) == (
        pytest.approx(0.31),
        pytest.approx(0.28),
        pytest.approx(0.2),
        pytest.approx(0.36),
    )
    assert client.get_run(runs[50]).info.status == "FINISHED"

    measured = {0: 0.12, 50: 0.31}
    predicted = {50: (0.28, 0.2, 0.36)}
    run_id = tracker.update_comparison(project, _figure(), [], measured=measured, predicted=predicted)
    measured[100], predicted[100] = 0.42, (0.45, 0.35, 0.52)
    assert tracker.update_comparison(project, _figure(), [], measured=measured, predicted=predicted) == run_id
    assert tracker.update_comparison(project, _figure(), [], measured=measured, predicted=predicted) == run_id
    plt.close("all")

    def history(name: str) -> list[tuple[int, float]]:
        return sorted((m.step, round(m.value, 6)) for m in client.get_metric_history(run_id, name))

    assert history("measured_score") == [(0, 0.12), (50, 0.31), (100, 0.42)]  # each step once
    assert history("predicted_score") == [(50, 0.28), (100, 0.45)]
    assert history("predicted_score_lo") == [(50, 0.2), (100, 0.35)]
    assert history("predicted_score_hi") == [(50, 0.36), (100, 0.52)]
    # a budget re-measured on new labels: a newer value at its step
    tracker.update_comparison(project, _figure(), [], measured={100: 0.44})
    plt.close("all")
    assert history("measured_score") == [(0, 0.12), (50, 0.31), (100, 0.42), (100, 0.44)]
    assert client.get_run(run_id).data.metrics["measured_score"] == pytest.approx(0.44)


def test_iteration_parent_nests_new_runs_with_dataset_inputs_and_system_metrics(tracker, project):
    """One parent run per iteration, created only when a child is written; children carry
    ``mlflow.parentRunId``, their dataset inputs (context, digest, rows) and sampled system metrics."""
    from integrations.mlflow_runs import DatasetRef
    from integrations.mlflow_system import SystemSampler

    client = MlflowClient(tracker.tracking_uri)
    runs = tracker.for_project(project, "m")
    train, evals, low = _labels(50), _labels(20, flip=3), _labels(32, flip=5)
    source = "http://localhost:8080/projects/7"
    datasets = [
        DatasetRef(f"{project}-train", label_set_hash(train), "training", len(train), source),
        DatasetRef(f"{project}-eval", label_set_hash(evals), "eval", len(evals), source),
    ]
    with SystemSampler(interval=0.05) as sampler:
        time.sleep(0.2)
    assert len({s.step for s in sampler.samples}) >= 3
    assert {"system/cpu_utilization_percentage", "system/process_memory_rss_megabytes"} <= {
        s.name for s in sampler.samples
    }

    runs.begin_iteration("labels-a", labeled=102)
    ft = runs.log_finetune(label_set_hash(train + evals), _finetune(50), datasets=datasets, system=sampler.samples)
    est = runs.log_estimate(
        label_set_hash(low),
        _coslow(),
        _prediction(),
        TARGETS,
        datasets=[DatasetRef(f"{project}-low", label_set_hash(low), "low-confidence", 32, source)],
    )
    dec = runs.log_decision("labels-a-decision", _decision())
    parent_id = runs.end_iteration({"labeled": 102, "new_runs": 3})
    assert parent_id is not None
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dataeff.kind"] == "iteration"
    assert parent.data.metrics["new_runs"] == 3 and parent.data.params["labeled"] == "102"
    for child in (ft, est, dec):
        assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent_id

    inputs = client.get_run(ft.run_id).inputs.dataset_inputs
    got = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): (i.dataset.name, i.dataset.digest)
        for i in inputs
    }
    assert got == {
        "training": (f"{project}-train", label_set_hash(train)[:36]),
        "eval": (f"{project}-eval", label_set_hash(evals)[:36]),
    }
    assert json.loads(inputs[0].dataset.profile) in ({"num_rows": 50}, {"num_rows": 20})
    assert json.loads(inputs[0].dataset.source) == {"url": source}
    est_inputs = client.get_run(est.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in est_inputs] == [f"{project}-low"]

    cpu = client.get_metric_history(ft.run_id, "system/cpu_utilization_percentage")
    sampled = [s for s in sampler.samples if s.name == "system/cpu_utilization_percentage"]
    assert sorted((m.step, m.timestamp) for m in cpu) == sorted((s.step, s.timestamp) for s in sampled)

    # the same iteration again: nothing new, so no second parent
    runs.begin_iteration("labels-a", labeled=102)
    assert runs.log_finetune(label_set_hash(train + evals), _finetune(50), datasets=datasets).created is False
    assert runs.end_iteration({"labeled": 102}) is None
    exp = client.get_experiment_by_name(project)
    parents = client.search_runs([exp.experiment_id], "tags.`dataeff.kind` = 'iteration'")
    assert [r.info.run_id for r in parents] == [parent_id]
    # a failed iteration that wrote a child leaves a FAILED parent, resumed by the next try
    runs.begin_iteration("labels-b", labeled=103)
    child = runs.log_finetune(label_set_hash(_labels(51) + evals), _finetune(100))
    failed = runs.end_iteration(status="FAILED")
    assert client.get_run(failed).info.status == "FAILED"
    runs.begin_iteration("labels-b", labeled=103)
    again = runs.log_decision("labels-b-decision", _decision())
    assert runs.end_iteration() == failed
    assert client.get_run(failed).info.status == "FINISHED"
    assert client.get_run(again.run_id).data.tags["mlflow.parentRunId"] == failed
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == failed
