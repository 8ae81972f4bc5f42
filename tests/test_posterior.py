"""Curve posterior: equals the paper's prediction with no points, moves to the truth with points."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from dataeff.efficiency import labels_needed, normalized_log_size
from dataeff.errors import DataError
from dataeff.posterior import Observation, PosteriorSettings, fit_posterior, weighted_quantile


def _true_score(n, auc, s0, h):
    return s0 + (h - s0) * normalized_log_size(n) ** ((1 - auc) / auc)


def test_no_points_equals_paper_prediction():
    post = fit_posterior(prior_auc=0.661, prior_sd=0.108, s0=0.3)
    for t in (0.5, 0.8, 0.9):
        need = post.labels_needed(t)
        assert need.median == pytest.approx(labels_needed(0.661, t), rel=1e-9)
        assert need.lo < need.median < need.hi and need.p_never == 0.0
    auc = post.auc_summary()
    # the grid is truncated at 0.999 (mass beyond: ~1e-3), which moves the median a hair
    assert auc["median"] == pytest.approx(0.661, abs=1e-3)
    assert auc["mean"] == pytest.approx(0.661, abs=1e-3)
    # the 80% interval of a normal prior: +-1.2816 sd (grid discretisation: a little slack)
    assert auc["hi"] - auc["lo"] == pytest.approx(2 * 1.2816 * 0.108, rel=0.02)
    json.dumps(post.as_dict(absolute_targets=(0.8,)))
    # untruncated prior and a known ceiling (a single h): exact equality, AUC included
    post = fit_posterior(prior_auc=0.5, prior_sd=0.05, s0=0.3, human_score=0.9)
    assert post.h_grid.tolist() == [0.9]
    assert post.auc_summary()["median"] == pytest.approx(0.5, abs=1e-12)
    for t in (0.5, 0.8, 0.9):
        assert post.labels_needed(t).median == pytest.approx(labels_needed(0.5, t), rel=1e-9)


def test_points_move_toward_truth():
    true_auc, s0, h = 0.45, 0.30, 0.90
    prior_auc, prior_sd = 0.66, 0.108  # the CoS-Low prior is off by ~2 sd
    rng = np.random.default_rng(0)
    truth = {t: labels_needed(true_auc, t) for t in (0.5, 0.8, 0.9)}
    prior_only = fit_posterior(prior_auc, prior_sd, s0, human_score=h)
    points = []
    errors = [max(abs(math.log2(prior_only.labels_needed(t).median / truth[t])) for t in truth)]
    widths = [prior_only.auc_summary()["hi"] - prior_only.auc_summary()["lo"]]
    for n in (50, 100, 200, 500):
        score = float(_true_score(n, true_auc, s0, h) + rng.normal(0, 0.01))
        points.append(Observation(n, score, 1000))
        post = fit_posterior(prior_auc, prior_sd, s0, points, human_score=h)
        errors.append(max(abs(math.log2(post.labels_needed(t).median / truth[t])) for t in truth))
        widths.append(post.auc_summary()["hi"] - post.auc_summary()["lo"])
    print("max |log2(labels needed / truth)| as points arrive:", [round(e, 3) for e in errors])
    print("80% AUC interval width:", [round(w, 3) for w in widths])
    assert errors[-1] < 0.5 * errors[0]
    assert errors[-1] < 0.25  # within ~19% of the true labels needed
    assert widths[-1] < 0.5 * widths[0]
    assert abs(post.auc_summary()["mean"] - true_auc) < abs(prior_auc - true_auc) / 3


def test_unknown_ceiling_and_absolute_targets():
    true_auc, s0, h = 0.55, 0.40, 0.85
    pts = [(n, float(_true_score(n, true_auc, s0, h)), 2000) for n in (50, 100, 200, 500, 1000)]
    post = fit_posterior(0.55, 0.1, s0, pts)  # h unknown: uniform on [best observed, 1]
    assert post.h_grid.size == 100 and post.h_grid.min() == pytest.approx(max(p[1] for p in pts))
    hs = post.h_summary()
    assert hs["lo"] <= h <= hs["hi"]
    # an absolute target above every plausible ceiling is "never"; below s0 needs nothing
    never = post.labels_needed(0.999, absolute=True)
    assert never.p_never > 0.5 and math.isinf(never.median) and never.as_dict()["median"] is None
    assert post.labels_needed(0.35, absolute=True).median == 0.0
    reachable = post.labels_needed(0.75, absolute=True)
    truth = labels_needed(true_auc, (0.75 - s0) / (h - s0))
    assert reachable.lo <= truth <= reachable.hi
    med, lo, hi = post.curve_band([0, 50, 500, 5000])
    assert med[0] == pytest.approx(s0) and np.all(lo <= med) and np.all(med <= hi)


def test_weighted_quantile_and_errors():
    v = np.array([1.0, 2.0, 3.0, np.inf])
    w = np.array([0.25, 0.25, 0.25, 0.25])
    assert weighted_quantile(v, w, 0.5) == pytest.approx(2.5)
    assert math.isinf(weighted_quantile(v, w, 0.9))
    with pytest.raises(DataError, match="prior_sd"):
        fit_posterior(0.5, 0.0, 0.3)
    with pytest.raises(DataError, match="score"):
        fit_posterior(0.5, 0.1, 0.3, [(50, float("nan"))])
    with pytest.raises(DataError, match="label count"):
        fit_posterior(0.5, 0.1, 0.3, [(-5, 0.5)])
    with pytest.raises(DataError, match="target"):
        fit_posterior(0.5, 0.1, 0.3).labels_needed(1.5)


def test_speed_200x100_grid():
    pts = [(n, 0.3 + 0.1 * i, 500) for i, n in enumerate((50, 100, 200, 500, 1000))]
    settings = PosteriorSettings(n_auc=200, n_h=100)
    fit_posterior(0.5, 0.1, 0.2, pts, settings=settings)  # warm-up
    t0 = time.perf_counter()
    runs = 20
    for _ in range(runs):
        post = fit_posterior(0.5, 0.1, 0.2, pts, settings=settings)
        post.labels_needed(0.9)
    ms = (time.perf_counter() - t0) / runs * 1000
    print(f"fit + labels_needed on a {post.weights.shape} grid with 5 points: {ms:.1f} ms")
    assert post.weights.shape[0] in (199, 200) and post.weights.shape[1] == 100
    assert ms < 200  # target < 50 ms; slack for a loaded 2-core CI machine
