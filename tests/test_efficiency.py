"""Efficiency AUC (reproduces all 100 published AUCs), the predicted curve and labels needed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dataeff.efficiency import (
    BUDGET_GRID,
    F1_TASKS,
    absolute_score,
    clean_curve,
    data_efficiency_auc,
    labels_needed,
    metric_for_task,
    normalized_log_size,
    normalized_target,
    predict,
    predicted_curve,
    read_human_scores,
    read_results,
    summarize_curve,
)
from dataeff.errors import DataError

PAPER = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper-results"


def _published():
    rows = []
    for path in sorted((PAPER / "auc_res").glob("*_auc_logscale_by_task_5000.json")):
        family = path.name.split("_auc_")[0]
        for task, rec in json.loads(path.read_text()).items():
            rows.append((family, task, rec))
    return rows


def test_reproduces_every_published_auc():
    humans = read_human_scores(PAPER / "human_eval.json")
    rows = _published()
    assert len(rows) == 100
    worst = 0.0
    for family, task, rec in rows:
        path = PAPER / "finetune_results" / f"{family}_{task}_full_result_v2.json"
        # one published curve (qwen/overruling) has no zero-shot point; the reference computes it anyway
        results = read_results(path, metric_for_task(task), require_zero_shot=False)
        auc = data_efficiency_auc(results, humans.get(task))
        worst = max(worst, abs(auc - rec["extrapolation_auc"]))
        assert abs(auc - rec["extrapolation_auc"]) < 1e-9, (family, task, auc, rec)
        summary = summarize_curve(results, humans.get(task))
        for key in ("max_acc", "min_acc", "human_eval"):
            assert abs(summary[key] - rec[key]) < 1e-12, (family, task, key, summary[key], rec[key])
    print(f"max |AUC diff| over 100 published values: {worst:.2e}")


def test_f1_tasks_and_metric_choice():
    assert {"coqa", "squad_v2", "qa_wikidata", "disfl_qa", "sciq", "typescript_chunks"} <= F1_TASKS
    assert metric_for_task("coqa") == "f1" and metric_for_task("anli") == "accuracy"
    coqa = PAPER / "finetune_results" / "llama_coqa_full_result_v2.json"
    f1 = read_results(coqa, "f1")
    default = read_results(coqa)  # accuracy absent -> exact_string_match_accuracy
    assert f1[0] == pytest.approx(0.00873717067295975)
    assert default[0] == pytest.approx(0.02077922077922078)
    # llama files carry budgets 4/8/16/32 and 10000: dropped
    anli = read_results(PAPER / "finetune_results" / "llama_anli_full_result_v2.json")
    assert list(anli) == [0, 50, 100, 200, 500, 1000, 2500, 5000]


def test_read_results_errors(tmp_path):
    with pytest.raises(DataError, match="zero-shot"):
        read_results({"50": {"accuracy": 0.5}})
    with pytest.raises(DataError, match="must be a number"):
        read_results({"0": {"accuracy": "high"}})
    with pytest.raises(DataError, match="finite"):
        read_results({"0": {"accuracy": float("nan")}})
    with pytest.raises(DataError, match="cut-off"):
        read_results({"0": {"accuracy": 0.1}, "10000": {"accuracy": 0.9}}, strict=True)
    assert read_results({"0": {"accuracy": 0.1}, "10000": {"accuracy": 0.9}}) == {0: 0.1}
    with pytest.raises(DataError, match="integer"):
        read_results({"0": {"accuracy": 0.1}, "fifty": {"accuracy": 0.2}})
    with pytest.raises(DataError, match="'f1'"):
        read_results({"0": {"accuracy": 0.1}}, metric="f1")
    with pytest.raises(DataError, match="pass metric"):
        read_results({"0": {"bleu": 0.1, "rouge1": 0.2}})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json.*invalid JSON"):
        read_results(bad)
    with pytest.raises(DataError, match="not found"):
        read_results(tmp_path / "missing.json")


def test_clean_curve_rules():
    budgets, scores = clean_curve({0: 0.4, 50: 0.35, 200: 0.6, 750: 0.55, 2500: 0.7, 7000: 0.9})
    # 100, 500, 1000, 5000 missing -> 0 then raised; 750 kept (off-grid); 7000 dropped
    assert budgets.tolist() == [0, 50, 100, 200, 500, 750, 1000, 2500, 5000]
    assert scores.tolist() == [0.4, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6, 0.7, 0.7]
    assert np.all(np.diff(scores) >= 0)


def test_auc_of_hand_computed_curve():
    # scores 0 at n=0 and 1 from n=50 on, ceiling 1: y jumps to 1 at x = log2(50)/log2(5000)
    res = {n: (0.0 if n == 0 else 1.0) for n in BUDGET_GRID}
    x50 = math.log2(50) / math.log2(5000)
    assert data_efficiency_auc(res, human_score=1.0) == pytest.approx(1 - x50 / 2)
    # a human score above the best lowers the AUC; None/NaN mean "unknown" -> best observed
    assert data_efficiency_auc(res, human_score=2.0) == pytest.approx((1 - x50 / 2) / 2)
    assert data_efficiency_auc(res, human_score=None) == data_efficiency_auc(res, human_score=float("nan"))
    with pytest.raises(DataError, match="flat curve"):
        data_efficiency_auc({n: 0.5 for n in BUDGET_GRID})


def test_normalized_log_size_and_curve():
    assert normalized_log_size(0) == 0.0
    assert normalized_log_size(1) == 0.0
    assert normalized_log_size(5000) == pytest.approx(1.0)
    np.testing.assert_allclose(normalized_log_size(np.array([0, 50, 5000])), [0, math.log2(50) / math.log2(5000), 1])
    with pytest.raises(DataError):
        normalized_log_size(-1)
    # integral of x^p over [0, 1] is the AUC
    x = np.linspace(0, 1, 200001)
    for auc in (0.2, 0.5, 0.661, 0.9):
        assert np.trapezoid(predicted_curve(auc, x), x) == pytest.approx(auc, abs=1e-4)
    with pytest.raises(DataError):
        predicted_curve(1.0, 0.5)


def test_worked_example_labels_needed():
    # method.md: CoS-Low 0.65, (0.54, 0.31) -> AUC' 0.661, x* = 0.814, n* ~ 1,030 at 0.9
    pred = predict(0.65, 0.54, 0.31, targets=(0.5, 0.8, 0.9))
    assert pred.auc == pytest.approx(0.661)
    n = labels_needed(0.661, 0.9)
    assert 1020 <= n <= 1040
    assert pred.labels_needed[0.9] == math.ceil(n)
    assert pred.labels_needed[0.5] < pred.labels_needed[0.8] < pred.labels_needed[0.9]
    d = pred.as_dict()
    json.dumps(d)
    assert d["auc"] == pytest.approx(0.661) and d["labels_needed"]["0.9"] == math.ceil(n)
    assert labels_needed(0.5, 1.0) == pytest.approx(5000)


def test_predict_clips_and_intervals():
    # Mistral coefficients give AUC' > 1 when CoS-Low > 0.81
    pred = predict(0.9, 0.797, 0.357)
    assert pred.auc_raw > 1 and pred.auc < 1 and pred.clipped
    pred = predict(0.65, 0.54, 0.31, auc_interval=(0.55, 0.77))
    lo, hi = pred.labels_needed_interval[0.9]
    assert lo < pred.labels_needed[0.9] < hi
    need = pred.need(0.9)
    assert need.lo < need.median < need.hi
    assert "labels_needed_interval" in pred.as_dict()
    with pytest.raises(DataError, match="CoS-Low"):
        predict(1.5, 0.5, 0.3)
    with pytest.raises(DataError, match="target"):
        predict(0.5, 0.5, 0.3, targets=(1.2,))


def test_absolute_targets():
    assert normalized_target(0.85, 0.4, 0.9) == pytest.approx(0.9)
    assert absolute_score(0.9, 0.4, 0.9) == pytest.approx(0.85)
    with pytest.raises(DataError, match="zero-shot"):
        normalized_target(0.3, 0.4, 0.9)
    with pytest.raises(DataError, match="above the ceiling"):
        normalized_target(0.95, 0.4, 0.9)
    with pytest.raises(DataError, match="ceiling"):
        normalized_target(0.5, 0.4, 0.4)
