"""The replay of real learning curves (``dataeff.replay``, ``dataeff bench replay``) on a few curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.replay import DEMO_GRID, DEMO_SEED_NOISE, demo_curve, main, methods
from dataeff.replay import Curve, NoiseModel, load_paper_curves, log2_error, observe_curve, replay_policy

PAPER = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper-results"


def test_true_crossing_interpolates_on_the_log_axis():
    c = Curve("toy", (0, 50, 100, 200), (0.0, 0.2, 0.6, 1.0))
    assert c.crossing(0.6) == pytest.approx(100.0)
    assert c.crossing(0.4) == pytest.approx(2 ** ((math.log2(50) + math.log2(100)) / 2))
    assert c.crossing(1.0) == pytest.approx(200.0)
    assert math.isinf(Curve("toy", (0, 50), (0.0, 0.5), human=1.0).crossing(0.9))
    assert c.oracle_budget(0.5, (50, 100, 200), cap=1000) == 100
    assert log2_error(math.inf, math.inf) == 0 and log2_error(200, 100) == pytest.approx(1.0)


def test_paper_curves_load_and_keep_their_published_auc():
    curves = load_paper_curves(PAPER)
    assert len(curves) == 99  # qwen/overruling has no zero-shot point and cannot be replayed
    published = json.loads((PAPER / "auc_res" / "llama_auc_logscale_by_task_5000.json").read_text())
    rte = next(c for c in curves if c.name == "llama/rte")
    assert rte.auc == pytest.approx(published["rte"]["extrapolation_auc"], abs=1e-12)


def test_demo_curve_replay_never_stops_before_the_target():
    curve = demo_curve()
    assert curve.oracle_budget(0.8, DEMO_GRID, 633) == 400
    noise = NoiseModel(60, DEMO_SEED_NOISE)
    rules_new, rules_old = [], []
    for draw in range(5):
        rng = np.random.default_rng([999, draw])
        observed = observe_curve(curve, DEMO_GRID[1:], noise, rng)
        for name, st in methods(633, DEMO_GRID).items():
            res = replay_policy(curve, observed, 0.488, 0.108, 0.8, st, 60)
            (rules_new if name == "dataeff" else rules_old).append(res.rule)
    assert "beyond_cap" not in rules_new, rules_new
    assert rules_old.count("beyond_cap") >= 3, rules_old  # the pre-study rule stops this team


def test_replay_benchmark_writes_the_issue_shape(tmp_path):
    out, md = tmp_path / "replay.json", tmp_path / "estimation.md"
    code = main(
        [
            "--reference",
            str(PAPER),
            "--curves",
            "3",
            "--draws",
            "1",
            "--no-trivial",
            "--workers",
            "1",
            "--cache",
            str(tmp_path / "cache.jsonl"),
            "--out",
            str(out),
            "--md",
            str(md),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    stage = next(s for s in report["stages"] if s["labels"] == 100)
    assert set(stage["median_abs_log2_error"]) >= {"prior", "curve_fit", "dataeff"}
    assert 0.0 <= stage["coverage_80"] <= 1.0 and "prior" in stage["coverage_80_by_method"]
    assert {"stopped_too_early", "overshoot", "labels_vs_oracle"} <= set(report["policy"])
    assert {"dataeff@1000", "dataeff_before@1000"} <= set(report["policy"]["by_method"])
    assert "| labels seen |" in md.read_text()
    # a re-run resumes from the cache: same numbers, nothing recomputed
    lines = (tmp_path / "cache.jsonl").read_text().count("\n")
    main(
        [
            "--reference",
            str(PAPER),
            "--curves",
            "3",
            "--draws",
            "1",
            "--no-trivial",
            "--workers",
            "1",
            "--cache",
            str(tmp_path / "cache.jsonl"),
            "--out",
            str(out),
        ]
    )
    assert (tmp_path / "cache.jsonl").read_text().count("\n") == lines
    assert json.loads(out.read_text())["stages"] == report["stages"]
