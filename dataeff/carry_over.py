"""How well a curve's AUC on a short label axis predicts its AUC on a longer one, measured on real curves.

:meth:`dataeff.calibration.Calibration.at_cutoff` carries a calibration measured up to N labels to a
project's axis N' with two constants, :data:`~dataeff.calibration.EXTRAPOLATION_SHORTFALL` (the mean
gap between the "flat after N" guess and the real AUC up to N', per unit of the unmeasured share
``w = 1 - log N / log N'``) and :data:`~dataeff.calibration.EXTRAPOLATION_SD` (their spread per
``sqrt(w)``). This module measures both on learning curves (the paper's published ones) and checks
them out of sample: the constants are fitted on the other tasks' curves (grouped folds: a task's
curves of every model family are held out together) and judged on the held-out curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.model_selection import GroupKFold

from dataeff.calibration import EXTRAPOLATION_SD, EXTRAPOLATION_SHORTFALL
from dataeff.efficiency import data_efficiency_auc
from dataeff.replay import Curve


@dataclass(frozen=True)
class CarryOverGaps:
    """The curves usable for one pair of axes, and their gaps.

    Attributes:
        n_short: N, the axis the short AUC is computed on (labels).
        n_long: N', the axis the real AUC is computed on (labels).
        w: unmeasured share of the long axis, ``1 - log N / log N'``.
        names: ``family/task`` of each usable curve, shape ``(m,)``.
        flat: the "flat after N" guess of each curve's AUC up to N', shape ``(m,)``.
        real: each curve's AUC up to N', shape ``(m,)``.
    """

    n_short: int
    n_long: int
    w: float
    names: tuple[str, ...]
    flat: np.ndarray
    real: np.ndarray

    @property
    def gaps(self) -> np.ndarray:
        """``flat - real``, shape ``(m,)``: how far the flat guess is too high."""
        return self.flat - self.real


def carry_over_gaps(curves: Sequence[Curve], n_short: int, n_long: int) -> CarryOverGaps:
    """Cut each curve at ``n_short`` labels and compare the flat guess of its AUC up to ``n_long`` with the real one.

    A curve is used when it was measured up to ``n_long``, has at least two points up to ``n_short``
    and rose above zero-shot by ``n_short`` (otherwise its short AUC is undefined). The long AUC uses
    the curve's human ceiling on the paper's 5000-label axis, as the paper does, and none on shorter axes.

    Args:
        curves: learning curves with a zero-shot point (:func:`dataeff.replay.load_paper_curves`).
        n_short: N (labels), ``< n_long``.
        n_long: N' (labels).
    """
    if not 1 < n_short < n_long:
        raise ValueError(f"need 1 < n_short < n_long, got {n_short}, {n_long}")
    r = math.log2(n_long) / math.log2(n_short)
    names, flat, real = [], [], []
    for c in curves:
        res = dict(zip(c.budgets, c.scores, strict=True))
        short = {b: s for b, s in res.items() if b <= n_short}
        if max(c.budgets) < n_long or len(short) < 2 or max(short.values()) <= short[0]:
            continue
        long = {b: s for b, s in res.items() if b <= n_long}
        names.append(c.name)
        flat.append(1 - (1 - data_efficiency_auc(short, None, max_budget=n_short)) / r)
        real.append(data_efficiency_auc(long, c.human if n_long == 5000 else None, max_budget=n_long))
    return CarryOverGaps(n_short, n_long, 1 - 1 / r, tuple(names), np.array(flat), np.array(real))


@dataclass(frozen=True)
class CarryOverCheck:
    """Out-of-sample errors of the carried-over AUC on one pair of axes.

    Attributes:
        n_short, n_long, w: as in :class:`CarryOverGaps`.
        n_curves: curves used.
        shortfall, sd: the constants fitted on all curves (per ``w`` and per ``sqrt(w)``).
        mae_flat: mean |error| of the flat guess (AUC units).
        mae_corrected: mean |error| of the corrected guess, constants fitted without the curve's task.
        coverage: share of held-out real AUCs inside the corrected guess's central ``level`` interval.
        level: the interval's nominal coverage.
        too_high: share of held-out curves whose corrected guess is above the real AUC.
        mae_shipped: mean |error| of the guess with dataeff's constants (fitted on all these curves).
        coverage_shipped: share of real AUCs inside that guess's ``level`` interval (sd
            ``EXTRAPOLATION_SD * sqrt(w)``, as :meth:`~dataeff.calibration.Calibration.at_cutoff` adds it).
    """

    n_short: int
    n_long: int
    w: float
    n_curves: int
    shortfall: float
    sd: float
    mae_flat: float
    mae_corrected: float
    coverage: float
    level: float
    too_high: float
    mae_shipped: float
    coverage_shipped: float


def check_carry_over(
    curves: Sequence[Curve], n_short: int, n_long: int, *, folds: int = 10, level: float = 0.9
) -> CarryOverCheck:
    """Fit the carry-over constants on all but one group of tasks, predict the held-out curves' long AUC.

    Args:
        curves: learning curves with a zero-shot point.
        n_short, n_long: the axes (labels).
        folds: grouped folds (a task's curves of every model family are held out together).
        level: nominal coverage of the interval ``guess +- z * sd`` whose empirical coverage is reported.
    """
    g = carry_over_gaps(curves, n_short, n_long)
    gaps, w = g.gaps, g.w
    tasks = np.array([name.split("/", 1)[-1] for name in g.names])
    z = float(stats.norm.ppf(0.5 + level / 2))
    errors = np.empty_like(gaps)
    inside = np.zeros(len(gaps), dtype=bool)
    for train, test in GroupKFold(n_splits=min(folds, len(set(tasks)))).split(gaps, groups=tasks):
        mean, spread = gaps[train].mean(), gaps[train].std()
        errors[test] = gaps[test] - mean  # corrected guess - real = flat - mean gap - real
        inside[test] = np.abs(errors[test]) <= z * spread
    shipped = gaps - EXTRAPOLATION_SHORTFALL * w
    return CarryOverCheck(
        n_short=n_short,
        n_long=n_long,
        w=w,
        n_curves=len(gaps),
        shortfall=float(gaps.mean() / w),
        sd=float(gaps.std() / math.sqrt(w)),
        mae_flat=float(np.abs(gaps).mean()),
        mae_corrected=float(np.abs(errors).mean()),
        coverage=float(inside.mean()),
        level=level,
        too_high=float((errors > 0).mean()),
        mae_shipped=float(np.abs(shipped).mean()),
        coverage_shipped=float((np.abs(shipped) <= z * EXTRAPOLATION_SD * math.sqrt(w)).mean()),
    )


def carry_over_table(checks: Sequence[CarryOverCheck]) -> str:
    """Markdown table of :func:`check_carry_over` results, one row per pair of axes."""
    level = f"{100 * checks[0].level:.0f}%" if checks else "interval"
    rows = [
        f"| N -> N' | w | curves | shortfall / w | sd / sqrt(w) | MAE flat | MAE corrected, held out "
        f"| {level} interval covers, held out | corrected too high | MAE, dataeff's constants | {level} covers, "
        "dataeff's constants |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        rows.append(
            f"| {c.n_short} -> {c.n_long} | {c.w:.3f} | {c.n_curves} | {c.shortfall:.2f} | {c.sd:.2f} | "
            f"{c.mae_flat:.3f} | {c.mae_corrected:.3f} | {100 * c.coverage:.0f}% | {100 * c.too_high:.0f}% | "
            f"{c.mae_shipped:.3f} | {100 * c.coverage_shipped:.0f}% |"
        )
    return "\n".join(rows)
