"""``dataeff study``: tiny model, tiny labeled tasks, real MLflow (SQLite), resume after an interruption."""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter

import pytest

from dataeff.calibration import fit_calibration
from dataeff.data import Example, TaskSpec
from dataeff.efficiency import data_efficiency_auc
from dataeff.errors import DataError
from dataeff.finetune import FinetuneSettings
from dataeff.models import LoraSettings
from dataeff.study import (
    StudySettings,
    TaskResult,
    budget_message,
    chance_level,
    majority_score,
    prepare_task,
    split_budgets,
    task_auc,
)
from dataeff.study_report import fit_study, render_markdown

WORDS = ["weather", "music", "jazz", "alarm", "flight", "Paris", "tomorrow", "seven", "fox", "dog"]


def _write_task(path, n: int, kind: str) -> str:
    """A deterministic choice task: ``yes/no`` (is a word in the sentence?) or ``positive/negative/neutral``."""
    rows = []
    for i in range(n):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 3 + 1) % len(WORDS)]
        if kind == "yesno":
            prompt, answer = f"Is {a} in: the {b} {a} {i % 7}? Answer:", "yes" if i % 3 else "no"
        else:
            prompt, answer = f"The {a} and the {b} {i % 5}. Sentiment:", ["positive", "negative", "neutral"][i % 3]
        rows.append({"id": f"{kind}-{i}", "prompt": prompt, "answer": answer})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    d = tmp_path_factory.mktemp("study-tasks")
    return {
        "yesno": _write_task(d / "yesno.jsonl", 76, "yesno"),
        "sentiment": _write_task(d / "sentiment.jsonl", 72, "sent"),
        "small": _write_task(d / "small.jsonl", 40, "yesno"),
    }


def _settings(tiny_model_dir, task_paths, name=None, **kw) -> StudySettings:
    base = dict(
        model=str(tiny_model_dir),
        tasks=tuple(task_paths),
        budgets=(0, 8, 50),
        seeds=(0, 1),
        eval_size=16,
        draws=2,
        k=8,
        lora=LoraSettings(r=4, alpha=8),
        device="cpu",
        dtype="fp32",
        finetune=FinetuneSettings(
            lora=LoraSettings(r=4, alpha=8), max_steps=1, batch_size=8, eval_batch_size=16, max_new_tokens=3
        ),
        max_new_tokens=4,
        name=name or f"study-test-{uuid.uuid4().hex[:8]}",
    )
    base.update(kw)
    return StudySettings(**base)


@pytest.fixture()
def tracker(mlflow_sqlite_uri):
    from integrations.mlflow_tracking import Tracker

    return Tracker(mlflow_sqlite_uri)


def _runs(tracker, study):
    return tracker.list_study_runs(study)


def _by_kind(runs):
    return Counter(r["kind"] for r in runs if r["status"] == "FINISHED")


# --------------------------------------------------------------------------- pure parts


def test_task_auc_is_the_papers_auc_with_n_and_ceiling():
    means = {0: 0.1, 50: 0.3, 100: 0.25, 200: 0.6}
    out = task_auc(means, cutoff=200)
    assert out["auc"] == pytest.approx(data_efficiency_auc(means, max_budget=200))
    assert out["ceiling"] == 0.6 and out["cutoff"] == 200 and out["note"] == ""
    human = task_auc(means, cutoff=5000, human_score=0.9)
    assert human["ceiling"] == 0.9
    assert human["auc"] == pytest.approx(data_efficiency_auc(means, human_score=0.9, max_budget=5000))
    small = task_auc({0: 0.1, 8: 0.5, 50: 0.4}, cutoff=50)
    assert "8" in small["note"] and "not part of the paper's AUC" in small["note"]
    flat = task_auc({0: 0.0, 50: 0.0}, cutoff=50)
    assert flat["auc"] is None and "undefined" in flat["note"]
    assert task_auc({50: 0.3}, cutoff=50)["auc"] is None


def test_chance_and_majority():
    spec = TaskSpec("t", labels=("a", "b", "c"))
    pool = [Example("p", "a", "1"), Example("p", "a", "2"), Example("p", "b", "3")]
    ev = [Example("q", "a", "4"), Example("q", "c", "5"), Example("q", "a", "6"), Example("q", "b", "7")]
    assert chance_level(spec, ev) == pytest.approx(1 / 3)
    assert majority_score(pool, ev, spec) == pytest.approx(0.5)
    per = [
        Example("q", "x", "8", meta={"choices": ["x", "y"]}),
        Example("q", "x", "9", meta={"choices": ["x", "y", "z", "w"]}),
    ]
    assert chance_level(TaskSpec("free"), per) == pytest.approx((0.5 + 0.25) / 2)
    assert chance_level(TaskSpec("free"), ev) is None


def test_budget_dropping_names_the_budgets(tiny_model_dir, tasks):
    assert split_budgets((0, 50, 100, 200), 120) == ((0, 50, 100), (200,))
    msg = budget_message("t", 120, (0, 50, 100), (200,))
    assert "200" in msg and "dropped" in msg and "120" in msg
    prepared = prepare_task(tasks["small"], _settings(tiny_model_dir, [tasks["small"]]))
    assert prepared.budgets == (0, 8) and prepared.dropped == (50,)
    assert any("50" in m and "dropped" in m for m in prepared.messages)
    with pytest.raises(DataError, match="too few"):
        prepare_task(tasks["small"], _settings(tiny_model_dir, [tasks["small"]], eval_size=35))


def test_settings_validation():
    with pytest.raises(DataError, match="max_budget"):
        StudySettings(budgets=(0, 100), max_budget=50)
    with pytest.raises(DataError, match="twice"):
        StudySettings(tasks=("a", "a"))
    s = StudySettings(budgets=(100, 0, 50, 50))
    assert s.budgets == (0, 50, 100) and s.cutoff == 100
    assert StudySettings(budgets=(0, 50), max_budget=5000).cutoff == 5000


def _result(name, coslow, auc, rand=0.1):
    r = TaskResult(
        task=name,
        source=name,
        n_pool=100,
        n_eval=20,
        metric="exact_match",
        chance=0.5,
        majority=0.55,
        budgets=[0, 50, 100],
        dropped=[200],
        scores={0: {0: 0.1}, 50: {0: 0.3, 1: 0.4}, 100: {0: 0.5, 1: 0.5}},
        coslow_low={"mean": coslow, "std": 0.01, "draws": [coslow]},
        coslow_random={"mean": rand},
        cutoff=100,
        seconds=12.0,
    )
    r.auc, r.ceiling = auc, 0.5
    return r


def test_fit_and_markdown():
    settings = StudySettings(budgets=(0, 50, 100, 200), tasks=("a", "b", "c", "d"))
    results = [
        _result("a", 0.2, 0.3, 0.5),
        _result("b", 0.4, 0.45, 0.1),
        _result("c", 0.6, 0.62, 0.3),
        _result("d", 0.5, 0.5, 0.2),
    ]
    fit = fit_study(results, "tiny", settings, provenance={"model": "m"})
    cal = fit.calibration
    assert cal is not None and cal.n_tasks == 4 and cal.fit_kind == "lora" and cal.provenance == {"model": "m"}
    assert fit.correlations["low"]["pearson"] > 0.9 and fit.correlations["random"]["n"] == 4
    md = render_markdown(results, settings, fit, provenance={"family": "tiny", "dtype": "fp32", "device": "cpu"})
    for text in (
        "| a |",
        "| d |",
        "0.350 ± 0.071",
        "dropped",
        "leave-one-task-out MAE",
        "always predicting the mean AUC",
        "relative error",
        "Pearson",
        "Spearman",
        "N = 200",
        "ceiling",
        "0.200 ± 0.010",
        "100 / 20",
        "zero-shot",
    ):
        assert text in md, text
    assert f"{cal.coef:.3f} [" in md
    # the answer in labels, leave one task out: truth = where the measured curve crosses the target
    check = fit.labels_check
    assert check["n_tasks"] == 4 and set(check["median_error"]) == {"calibration", "trivial"}
    half = [row for row in check["tasks"] if row["task"] == "a" and row["target"] == 0.5][0]
    assert half["true"] == pytest.approx(50**0.8)  # 0 -> 0.1, 50 -> 0.35 of a 0.1..0.5 gain: 62.5% at 50 labels
    loo = fit_calibration([(r.task, r.coslow_low["mean"], r.auc) for r in results[1:]], "x", max_budget=200)
    assert half["auc_calibration"] == pytest.approx(loo.coef * 0.2 + loo.intercept)
    assert "The answer in labels, leave one task out" in md and "| a | 50% |" in md
    # best 0.5 vs majority 0.55: no task learns beyond the majority class, so no separate fit
    assert fit.learners["n"] == 0 and "too few for a separate fit" in md and "| -0.050 |" in md
    learners = [_result(t, c, a) for t, c, a in (("e", 0.2, 0.5), ("f", 0.4, 0.3), ("g", 0.6, 0.2))]
    for r in learners:
        r.majority = 0.3  # best 0.5: +0.2
    both = fit_study(results + learners, "tiny", settings)
    assert both.learners["tasks"] == ["e", "f", "g"] and both.learners["pearson"] < -0.9
    few = fit_study(results[:2], "tiny", settings)
    assert few.calibration is None and "fit skipped" in few.note
    assert "fit skipped" in render_markdown(results[:2], settings, few)


def test_task_result_round_trip():
    r = _result("a", 0.2, 0.3)
    back = TaskResult.from_dict(json.loads(json.dumps(r.as_dict())))
    assert back.as_dict() == r.as_dict() and back.means() == r.means()
    assert r.sds()[50] == pytest.approx(math.sqrt(0.005))


# --------------------------------------------------------------------------- the driver, real MLflow


def test_study_runs_resumes_and_rewrites_nothing(tiny_model_dir, tiny_loaded, tasks, tracker, tmp_path):
    from flows.study import run_study

    paths = [tasks["yesno"], tasks["sentiment"]]
    # uninterrupted study: 1 parent per task, 2 CoS-Low children, 1 fine-tune per budget x seed (zero-shot once)
    full = _settings(tiny_model_dir, paths)
    out = run_study(
        full,
        tracker,
        out=tmp_path / "full.md",
        calibration_out=tmp_path / "cal.json",
        loaded=tiny_loaded,
        progress=False,
    )
    kinds = _by_kind(_runs(tracker, full.study_name))
    assert kinds == {"study-task": 2, "study-coslow": 4, "study-finetune": 2 * (1 + 2 + 2), "study-summary": 1}
    md = (tmp_path / "full.md").read_text()
    assert "| yesno |" in md and "| sentiment |" in md and "fit skipped" in md
    assert out["calibration_file"] is None and out["cutoff_N"] == 50
    row = out["tasks"][0]
    assert row["chance"] == pytest.approx(0.5) and row["majority"] is not None
    assert set(row["means"]) == {"0", "8", "50"} and row["coslow_low"] is not None and row["coslow_random"] is not None
    assert "below 50" in row["auc_note"]

    # interrupted after 4 new child runs, then resumed
    study = _settings(tiny_model_dir, paths)
    created = []

    def stop(event):
        created.append(event) if event["created"] else None
        if len(created) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(study, tracker, loaded=tiny_loaded, progress=False, on_run=stop)
    partial = _runs(tracker, study.study_name)
    assert any(r["kind"] == "study-task" and r["status"] == "KILLED" for r in partial)
    resumed = run_study(study, tracker, out=tmp_path / "resumed.md", loaded=tiny_loaded, progress=False)
    runs = _runs(tracker, study.study_name)
    assert all(r["status"] == "FINISHED" for r in runs)
    assert _by_kind(runs) == kinds
    keys = [r["tags"]["dataeff.run_key"] for r in runs]
    assert len(keys) == len(set(keys))
    assert resumed["runs_written"] == len(runs) - 4 - 1  # the 4 children and the parent of the first run are reused
    # children hang under their task's parent
    parents = {r["run_id"] for r in runs if r["kind"] == "study-task"}
    from mlflow import MlflowClient

    client = MlflowClient(tracker.tracking_uri)
    children = [r["run_id"] for r in runs if r["kind"] in ("study-finetune", "study-coslow")]
    assert all(client.get_run(c).data.tags.get("mlflow.parentRunId") in parents for c in children)
    # same numbers as the uninterrupted study (deterministic on CPU)
    assert [t["means"] for t in resumed["tasks"]] == [t["means"] for t in out["tasks"]]

    # a third run writes nothing and does not need the model
    again = run_study(study, tracker, out=tmp_path / "again.md", loaded=None, progress=False)
    assert again["runs_written"] == 0 and len(_runs(tracker, study.study_name)) == len(runs)
    assert (tmp_path / "again.md").read_text() == (tmp_path / "resumed.md").read_text()


def test_results_folder_carries_finished_tasks_to_a_new_mlflow_store(tiny_model_dir, tiny_loaded, tasks, tmp_path):
    """A study resumed on another machine (empty MLflow store) takes committed task results, measures nothing."""
    from flows.study import run_study
    from integrations.mlflow_tracking import Tracker

    study = _settings(tiny_model_dir, [tasks["yesno"], tasks["sentiment"]], name="carried")
    first = Tracker(f"sqlite:///{tmp_path / 'first.db'}")
    done = run_study(
        study, first, out=tmp_path / "first.md", loaded=tiny_loaded, progress=False, results_dir=tmp_path / "results"
    )
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["sentiment.json", "yesno.json"]
    fresh = Tracker(f"sqlite:///{tmp_path / 'second.db'}")
    moved = run_study(
        study,
        fresh,
        out=tmp_path / "second.md",
        loaded=None,
        progress=False,  # None: never loads a model
        results_dir=tmp_path / "results",
    )
    assert [t["means"] for t in moved["tasks"]] == [t["means"] for t in done["tasks"]]
    assert _by_kind(_runs(fresh, study.study_name)) == {
        "study-task": 2,
        "study-summary": 1,
    }  # parents logged from files
    assert (tmp_path / "second.md").read_text().split("## Calibration fit")[0] == (
        tmp_path / "first.md"
    ).read_text().split("## Calibration fit")[0]

    # a smaller grid of the same measurement reuses the kept results (no model), AUC recomputed at its N
    small = _settings(tiny_model_dir, [tasks["yesno"], tasks["sentiment"]], name="carried", budgets=(0, 8))
    third = Tracker(f"sqlite:///{tmp_path / 'third.db'}")
    shrunk = run_study(small, third, loaded=None, progress=False, results_dir=tmp_path / "results")
    assert shrunk["runs_written"] == 3 and shrunk["cutoff_N"] == 8
    for big, row in zip(done["tasks"], shrunk["tasks"], strict=True):
        assert set(row["means"]) == {"0", "8"} and row["means"] == {b: big["means"][b] for b in ("0", "8")}
        assert "budgets [50] not used" in " ".join(row["messages"])
    kept = json.loads((tmp_path / "results" / "yesno.json").read_text())
    assert kept["result"]["budgets"] == [0, 8, 50]  # the larger grid's file is not overwritten


def test_an_interrupted_task_resumes_on_a_new_mlflow_store_from_its_kept_children(
    tiny_model_dir, tiny_loaded, tasks, tmp_path
):
    """Children measured before an interruption are kept in the results folder and not measured again elsewhere."""
    from flows.study import run_study
    from integrations.mlflow_tracking import Tracker

    study = _settings(tiny_model_dir, [tasks["yesno"]], name="kept-children")
    created = []

    def stop(event):
        if event["created"]:
            created.append(event)
        if len(created) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(
            study,
            Tracker(f"sqlite:///{tmp_path / 'a.db'}"),
            loaded=tiny_loaded,
            progress=False,
            on_run=stop,
            results_dir=tmp_path / "results",
        )
    assert len(list((tmp_path / "results" / "yesno").glob("*.json"))) == 3
    events = []
    out = run_study(
        study,
        Tracker(f"sqlite:///{tmp_path / 'b.db'}"),
        loaded=tiny_loaded,
        progress=False,
        on_run=events.append,
        results_dir=tmp_path / "results",
    )
    assert sum(e["carried"] for e in events) == 3 and len(events) > 3  # 3 carried, the rest measured
    assert not (tmp_path / "results" / "yesno").exists() and (tmp_path / "results" / "yesno.json").is_file()
    assert out["tasks"][0]["coslow_low"] is not None


def test_errors_failures_and_small_task(tiny_model_dir, tiny_loaded, tasks, tracker, tmp_path, monkeypatch):
    import flows.study as driver

    with pytest.raises(DataError, match="nope.jsonl"):
        driver.run_study(
            _settings(tiny_model_dir, [tasks["yesno"], str(tmp_path / "nope.jsonl")]),
            tracker,
            loaded=tiny_loaded,
            progress=False,
        )

    from dataeff.bigbench import _archive_candidates, _index_file

    if _index_file().is_file() or any(p.is_file() for p in _archive_candidates()):
        with pytest.raises(DataError, match="sports_understandin.*similar names: sports_understanding"):
            driver.run_study(
                _settings(tiny_model_dir, ["sports_understandin"]), tracker, loaded=tiny_loaded, progress=False
            )

    real = driver.run_finetune

    def flaky(loaded, train, ev, spec, budget, settings, **kw):
        if spec.name == "yesno" and budget == 8 and settings.seed == 1:
            raise RuntimeError("CUDA out of memory (injected)")
        return real(loaded, train, ev, spec, budget, settings, **kw)

    monkeypatch.setattr(driver, "run_finetune", flaky)
    study = _settings(tiny_model_dir, [tasks["yesno"], tasks["small"]])
    out = driver.run_study(study, tracker, out=tmp_path / "s.md", loaded=tiny_loaded, progress=False)
    yes, small = out["tasks"]
    assert yes["failures"] == [{"budget": 8, "seed": 1, "error": "RuntimeError: CUDA out of memory (injected)"}]
    assert set(yes["means"]) == {"0", "8", "50"}  # seed 0 of budget 8 still counts
    assert small["dropped"] == [50] and any("50" in m and "dropped" in m for m in small["messages"])
    assert set(small["means"]) == {"0", "8"}
    md = (tmp_path / "s.md").read_text()
    assert "failed" in md and "dropped" in md and "CUDA out of memory" in md
    runs = _runs(tracker, study.study_name)
    failed = [r for r in runs if r["status"] == "FAILED"]
    assert [r["kind"] for r in failed if r["kind"] != "study-task"] == ["study-finetune"]
    assert any(r["kind"] == "study-task" and r["status"] == "FAILED" for r in runs)  # retried on the next run

    # a re-run retries only the failed fine-tune
    monkeypatch.setattr(driver, "run_finetune", real)
    again = driver.run_study(study, tracker, loaded=tiny_loaded, progress=False)
    assert again["tasks"][0]["failures"] == [] and again["runs_written"] == 2  # the fine-tune + the new summary


def test_cli_help_and_error(capsys, tmp_path, mlflow_sqlite_uri):
    from app.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["study", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--model",
        "--tasks",
        "--budgets",
        "--seeds",
        "--eval-size",
        "--draws",
        "--out",
        "--calibration-out",
        "--device",
        "--dtype",
        "--tracking-uri",
        "--max-budget",
    ):
        assert option in text, option
    code = main(
        [
            "study",
            "--tasks",
            str(tmp_path / "missing.jsonl"),
            "--tracking-uri",
            mlflow_sqlite_uri,
            "--out",
            str(tmp_path / "x.md"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "missing.jsonl" in err


def test_cli_study_fits_and_saves_calibration(tiny_model_dir, tmp_path, mlflow_sqlite_uri, monkeypatch, capsys):
    """Three tasks with a measurable AUC (fine-tune scores faked, everything else real) -> fit, file, report, no rewrite."""
    import flows.study as driver
    from app.cli import main
    from dataeff.calibration import Calibration
    from dataeff.finetune import FinetuneResult

    gains = {"t1": 0.2, "t2": 0.5, "t3": 0.8}

    def fake(loaded, train, ev, spec, budget, settings, **kw):
        score = {0: 0.1, 50: 0.1 + 0.5 * gains[spec.name], 100: 0.6}[budget] - 0.01 * settings.seed
        return FinetuneResult(
            budget=budget,
            score=score,
            zero_shot=budget == 0,
            n_train=budget,
            n_eval=len(ev),
            seconds_train=0.5,
            seconds_eval=0.25,
            adapter_dir=None,
            settings=settings.as_dict(),
        )

    monkeypatch.setattr(driver, "run_finetune", fake)
    paths = [
        _write_task(tmp_path / f"{name}.jsonl", 120 + 7 * i, ["yesno", "sent"][i % 2]) for i, name in enumerate(gains)
    ]
    study = f"study-cli-{uuid.uuid4().hex[:8]}"
    argv = [
        "study",
        "--model",
        str(tiny_model_dir),
        "--tasks",
        ",".join(paths),
        "--budgets",
        "0,50,100",
        "--seeds",
        "0,1",
        "--eval-size",
        "16",
        "--draws",
        "2",
        "--k",
        "8",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--name",
        study,
        "--family",
        "tiny",
        "--tracking-uri",
        mlflow_sqlite_uri,
        "--out",
        str(tmp_path / "study.md"),
        "--calibration-out",
        str(tmp_path / "tiny.json"),
        "--no-progress",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fit"]["calibration"] is not None, out["fit"]["note"]
    assert [t["task"] for t in out["tasks"]] == list(gains) and all(t["auc"] is not None for t in out["tasks"])
    aucs = [t["auc"] for t in out["tasks"]]
    assert aucs == sorted(aucs) and out["cutoff_N"] == 100
    cal = Calibration.load(tmp_path / "tiny.json")
    assert cal.family == "tiny" and cal.n_tasks == 3 and cal.fit_kind == "lora" and cal.dtype == "fp32"
    assert cal.coef_interval is not None and cal.loo_mae is not None and cal.baseline_loo_mae is not None
    prov = cal.provenance
    for key in (
        "model",
        "dtype",
        "device",
        "lora",
        "finetune",
        "budgets",
        "seeds",
        "tasks",
        "date",
        "eval_size",
        "draws",
    ):
        assert key in prov, key
    assert prov["budgets"] == [0, 50, 100] and prov["seeds"] == [0, 1] and len(prov["tasks"]) == 3
    md = (tmp_path / "study.md").read_text()
    assert "leave-one-task-out MAE" in md and f"{cal.coef:.3f} [" in md and "| t3 |" in md
    saved = (tmp_path / "tiny.json").read_text()

    assert main(argv) == 0  # a finished study: nothing new in MLflow, the same files
    again = json.loads(capsys.readouterr().out)
    assert again["runs_written"] == 0
    assert (tmp_path / "tiny.json").read_text() == saved and (tmp_path / "study.md").read_text() == md
