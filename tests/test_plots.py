"""Figures: predicted curve with band, measured points, targets; written to PNG and checked."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from dataeff.calibration import get_calibration
from dataeff.errors import DataError
from dataeff.plots import plot_curve
from dataeff.posterior import fit_posterior


def _check_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_prediction_figure(tmp_path):
    pred = get_calibration("llama").predict(0.65)
    fig = plot_curve(
        pred,
        measured={0: 0.30, 50: 0.45, 100: 0.52, 200: 0.61},
        title="CoS-Low prediction",
        s0=0.30,
        h=0.90,
        label_cap=1000,
        metric="exact_match",
        n_eval=200,
    )
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "exact_match on 200 held-out items"
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["0", "50"]
    labels = ax.get_legend_handles_labels()[1]
    need = pred.need(0.9).median
    assert "measured" in labels and any(lab.startswith("AUC") for lab in labels)
    # targets say they are shares of the gain, their score and labels; zero-shot, ceiling and the cap are named
    assert f"90% of the gain (score {0.30 + 0.9 * 0.6:.3f}) at ~{int(np.ceil(need)):,} labels" in labels
    assert "zero-shot 0.300" in labels and "ceiling 0.900 (assumed)" in labels and "label cap 1,000" in labels
    legend = ax.get_legend()
    assert legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1  # outside the axes, not over the band
    path = tmp_path / "prediction.png"
    fig.savefig(path, dpi=80)
    _check_png(path)
    # normalised axis without s0/h; measured points then need s0/h
    fig = plot_curve(pred)
    assert fig.axes[0].get_ylabel() == "share of the achievable gain"
    with pytest.raises(DataError, match="s0"):
        plot_curve(pred, measured={50: 0.4})


def test_posterior_figure(tmp_path):
    pts = {50: 0.45, 100: 0.52, 200: 0.61, 500: 0.70}
    post = fit_posterior(0.66, 0.108, 0.30, [(n, s, 500) for n, s in pts.items()])
    fig = plot_curve(post, measured={0: 0.30, **pts}, title="posterior after 4 fine-tunes")
    ax = fig.axes[0]
    band = [c for c in ax.collections if c.get_label() == "posterior band"]
    assert band and ax.get_ylabel() == "score"
    median_line = [ln for ln in ax.get_lines() if ln.get_label() == "posterior median"][0]
    y = np.asarray(median_line.get_ydata())
    assert y[0] == pytest.approx(0.30) and np.all(np.diff(y) >= -1e-12)
    path = tmp_path / "posterior.png"
    fig.savefig(path, dpi=80)
    _check_png(path)
