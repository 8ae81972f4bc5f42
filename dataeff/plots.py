"""Figures of the predicted data-efficiency curve against measured fine-tune points.

Figures are built with :class:`matplotlib.figure.Figure` on the Agg canvas: no pyplot, no GUI
backend and no global state, so they are safe in servers and flows. Save with
``fig.savefig(path)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from dataeff.defaults import TARGETS
from dataeff.efficiency import BUDGET_GRID, Prediction, absolute_score, normalized_log_size, predicted_curve
from dataeff.errors import DataError
from dataeff.posterior import GridPosterior


def _plot_x(n: np.ndarray) -> np.ndarray:
    """Label counts on the log axis: n = 0 is drawn at 1 (the method's x(0) = x(1) = 0)."""
    return np.maximum(np.asarray(n, dtype=float), 1.0)


def plot_curve(
    source: Prediction | GridPosterior | None,
    measured: Mapping[int, float] | None = None,
    targets: Sequence[float] = TARGETS,
    title: str = "",
    *,
    s0: float | None = None,
    h: float | None = None,
    max_budget: int | None = None,
    level: float | None = None,
    label_cap: int | None = None,
    metric: str = "score",
    n_eval: int | None = None,
    figsize: tuple[float, float] = (8.5, 4.5),
) -> Figure:
    """Predicted curve with its band, measured points and target lines.

    Args:
        source: a :class:`~dataeff.efficiency.Prediction` (band from its AUC interval), a curve
            posterior (:class:`~dataeff.posterior.CurvePosterior` or
            :class:`~dataeff.posterior_flex.FlexPosterior`: posterior median and central band), or
            ``None`` (measured points only).
        measured: ``{labels: score}`` of measured fine-tunes (absolute scores; budget 0 = zero-shot).
        targets: normalised targets in (0, 1] drawn as horizontal lines, with a vertical line at
            the predicted labels needed.
        title: figure title.
        s0, h: zero-shot score and ceiling. With both (or a posterior, which knows them) the y axis
            is the absolute score; otherwise it is the normalised share of the gain, and measured
            points cannot be drawn.
        max_budget: N (default: the source's, else 5000).
        level: band coverage for a posterior (default: its settings).
        label_cap: the most labels the team will give, drawn as a vertical line (``None``: not drawn).
        metric, n_eval: the score's metric and the size of the held-out split, named on the y axis.
        figsize: inches (the legend sits to the right of the axes, outside the band).

    Returns:
        The :class:`~matplotlib.figure.Figure` (x: labels on a log scale with 0 at the left,
        ticks at the budget grid).
    """
    if isinstance(source, GridPosterior):
        post = source
        s0 = post.s0 if s0 is None else s0
        h = post.h_summary()["median"] if h is None else h
        max_budget = max_budget or post.max_budget
    else:
        post = None
        max_budget = max_budget or (source.max_budget if isinstance(source, Prediction) else 5000)
    absolute = s0 is not None and h is not None
    if s0 is not None and h is not None and not h > s0:
        raise DataError(f"ceiling h={h} must be above the zero-shot score s0={s0}")
    if measured and not absolute:
        raise DataError("measured scores are absolute: give s0 (zero-shot) and h (ceiling) to plot them")

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    n = np.unique(np.concatenate([[0.0], np.geomspace(1, max_budget, 300)]))
    to_y = (lambda y: absolute_score(y, s0, h)) if s0 is not None and h is not None else (lambda y: np.asarray(y))

    needs: dict[float, float] = {}
    if post is not None:
        med, lo, hi = post.curve_band(n, level=level)  # absolute scores (a posterior knows s0, h)
        ax.fill_between(_plot_x(n), lo, hi, alpha=0.25, color="C0", lw=0, label="posterior band")
        ax.plot(_plot_x(n), med, color="C0", label="posterior median")
        needs = {t: post.labels_needed(t, level=level).median for t in targets}
    elif isinstance(source, Prediction):
        x = normalized_log_size(n, max_budget)
        if source.auc_interval is not None:
            lo_auc, hi_auc = source.auc_interval
            ax.fill_between(
                _plot_x(n),
                to_y(predicted_curve(lo_auc, x)),
                to_y(predicted_curve(hi_auc, x)),
                alpha=0.25,
                color="C0",
                lw=0,
                label=f"AUC {lo_auc:.2f}-{hi_auc:.2f}",
            )
        ax.plot(_plot_x(n), to_y(predicted_curve(source.auc, x)), color="C0", label=f"predicted (AUC {source.auc:.2f})")
        needs = {t: source.need(t).median for t in targets}
    elif source is not None:
        raise DataError(f"source must be a Prediction, a CurvePosterior or None, got {type(source).__name__}")

    if s0 is not None and h is not None:
        ax.axhline(float(s0), color="0.4", lw=0.8, label=f"zero-shot {s0:.3f}")
        ax.axhline(float(h), color="0.2", lw=0.8, ls="-.", label=f"ceiling {h:.3f} (assumed)")
    for i, t in enumerate(targets):
        color = f"C{i + 2}"
        need = needs.get(t)
        reach = need is not None and math.isfinite(need) and need <= max_budget
        when = f" at ~{math.ceil(need):,} labels" if reach and need is not None else " not within N"
        y = float(to_y(t))
        score = f" (score {y:.3f})" if absolute else ""
        ax.axhline(y, color=color, ls="--", lw=0.8, label=f"{t:.0%} of the gain{score}{when if needs else ''}")
        if reach and need is not None:
            ax.axvline(max(need, 1.0), color=color, ls=":", lw=0.8)
    if label_cap is not None and 0 < label_cap:
        ax.axvline(min(label_cap, max_budget), color="C3", lw=1.2, label=f"label cap {label_cap:,}")

    if measured:
        ns = np.array(sorted(measured), dtype=float)
        ax.plot(_plot_x(ns), [measured[int(k)] for k in ns], "o", color="k", ms=5, label="measured", zorder=5)

    ax.set_xscale("log")
    ticks = [b for b in BUDGET_GRID if b <= max_budget]
    ax.xaxis.set_major_locator(FixedLocator(_plot_x(np.array(ticks)).tolist()))
    ax.set_xticklabels([f"{b:,}" for b in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(0.9, max_budget * 1.1)
    ax.set_xlabel("labels (log scale; 0 = zero-shot)")
    eval_part = f" on {n_eval} held-out items" if n_eval else ""
    ax.set_ylabel(f"{metric}{eval_part}" if absolute else "share of the achievable gain")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def plot_confidence(
    confidences: Sequence[float],
    highlight: Sequence[float] = (),
    title: str = "",
    *,
    bins: int = 30,
    figsize: tuple[float, float] = (7.0, 3.5),
) -> Figure:
    """Histogram of the model's answer confidence over the pool, the chosen low-confidence batch on top.

    Args:
        confidences: one confidence in [0, 1] per pool item.
        highlight: confidences of the low-confidence batch (drawn in a second colour).
        title: figure title.
        bins: histogram bins over [0, 1].
        figsize: inches.
    """
    if len(confidences) == 0:
        raise DataError("plot_confidence: no confidences to plot")
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    edges = np.linspace(0.0, 1.0, bins + 1).tolist()
    ax.hist(np.asarray(confidences, dtype=float), bins=edges, color="#9aa7b8", label=f"pool ({len(confidences)})")
    if len(highlight):
        ax.hist(
            np.asarray(highlight, dtype=float),
            bins=edges,
            color="#d1495b",
            label=f"low-confidence batch ({len(highlight)})",
        )
    decile = float(np.quantile(np.asarray(confidences, dtype=float), 0.1))
    ax.axvline(decile, color="#333333", linestyle="--", linewidth=1, label=f"bottom decile ({decile:.2f})")
    ax.set_xlabel("confidence (mean probability of the answer tokens)")
    ax.set_ylabel("items")
    ax.set_title(title or "answer confidence over the pool")
    ax.legend(loc="upper left", fontsize=8)
    return fig
