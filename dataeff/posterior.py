"""A posterior over the data-efficiency curve that starts at the CoS-Low prediction and is
updated by measured fine-tune points (method.md section 4, "one workable way").

Model. The score after fine-tuning on ``n`` labels is

    s(n) = s0 + (h - s0) * x(n) ** p(AUC),   x(n) = log2(max(n, 1)) / log2(N),   p = (1 - AUC) / AUC

with ``s0`` the measured zero-shot score, ``h`` the ceiling and ``N`` the cut-off (``x`` is capped
at 1). The unknowns ``(AUC, h)`` live on a grid:

* prior ``AUC ~ Normal(AUC', sd^2)`` truncated to the grid, ``AUC'`` and ``sd`` from the
  calibration (:meth:`dataeff.calibration.Calibration.predict_sd`);
* prior ``h``: a point mass at ``max(human score, best observed score)`` when the human score is
  known, else uniform on ``[best observed score, score_max]`` (``score_max`` = 1);
* likelihood of each measured ``(n, score)``: ``Normal(score; s(n), sd_i^2)`` with the binomial
  sd of an eval set of ``n_eval`` items, ``sd_i = max(sqrt(score (1 - score) / n_eval), noise_floor)``
  (the floor stands for seed-to-seed fine-tune noise and for the curve family's misfit).

Labels needed for a normalised target ``t`` (a share of the way from ``s0`` to ``h``) in a grid cell
is ``2 ** (t ** (1/p) * log2 N)``; for an absolute score ``S`` it uses ``t = (S - s0) / (h - s0)``,
is 0 when ``S <= s0`` and ``inf`` ("never within N") when ``S > h``. Reported: the posterior
median and central interval, and ``P(never)``. With no points the AUC grid is symmetric around
``AUC'`` (unless the prior is truncated by the (0, 1) bounds) and the median equals the paper's
prediction ``labels_needed(AUC', t)`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Protocol

import numpy as np
from scipy.special import logsumexp

from dataeff.defaults import TARGETS
from dataeff.efficiency import AUC_CLIP, MAX_BUDGET, LabelsNeeded, normalized_log_size, target_key
from dataeff.errors import DataError


@dataclass(frozen=True)
class PosteriorSettings:
    """Grid and noise settings of :func:`fit_posterior`.

    Attributes:
        n_auc: AUC grid points (uniform spacing with ``AUC'`` on the grid, so the grid may hold
            one point fewer; an odd count makes it symmetric around ``AUC'``).
        n_h: ceiling grid points when ``h`` is uncertain (1 when a human score is given).
        auc_halfwidth_sd: the AUC grid spans ``AUC' +- auc_halfwidth_sd * sd`` ...
        auc_min_halfwidth: ... but at least ``+- auc_min_halfwidth``, clipped to ``AUC_CLIP``.
        noise_floor: smallest sd of a measured score (score units).
        default_n_eval: eval-set size assumed for a point given without one.
        score_max: the largest possible score (upper end of the uniform prior on ``h``).
        max_budget: N.
        level: coverage of the reported central intervals.
    """

    n_auc: int = 201
    n_h: int = 100
    auc_halfwidth_sd: float = 6.0
    auc_min_halfwidth: float = 0.15
    noise_floor: float = 0.02
    default_n_eval: int = 200
    score_max: float = 1.0
    max_budget: int = MAX_BUDGET
    level: float = 0.8

    def __post_init__(self) -> None:
        if self.n_auc < 3 or self.n_h < 1:
            raise DataError(f"posterior grid too small: n_auc={self.n_auc} (>= 3), n_h={self.n_h} (>= 1)")
        if not 0 < self.level < 1:
            raise DataError(f"level must be in (0, 1), got {self.level}")
        if not self.noise_floor > 0:
            raise DataError(f"noise_floor must be > 0, got {self.noise_floor}")


@dataclass(frozen=True)
class Observation:
    """One measured fine-tune: ``score`` on an eval set of ``n_eval`` items after ``n`` labels."""

    n: int
    score: float
    n_eval: int | None = None


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Quantile ``q`` of a discrete distribution (values may contain ``+inf``).

    Interpolates linearly between the cumulative-weight midpoints of the sorted values; if the
    mass of ``+inf`` exceeds ``1 - q`` the answer is ``inf``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    total = w.sum()
    if not total > 0:
        raise DataError("posterior has no mass; the measured points contradict the prior entirely")
    w = w / total
    finite = np.isfinite(v)
    p_inf = float(w[~finite].sum())
    if q > 1.0 - p_inf + 1e-12 or not finite.any():
        return math.inf
    v, w = v[finite], w[finite]
    qf = min(q / (1.0 - p_inf), 1.0)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order] / w.sum()
    mid = np.cumsum(w) - 0.5 * w
    return float(np.interp(qf, mid, v))


class _GridSettings(Protocol):
    """What :class:`GridPosterior` reads from a subclass's ``settings``."""

    @property
    def level(self) -> float: ...

    @property
    def max_budget(self) -> int: ...


class GridPosterior:
    """What every grid posterior shares: intervals, labels needed and reach probabilities.

    A subclass holds ``weights`` (any shape, sums to 1) and ``settings`` (with ``level`` and
    ``max_budget``) and implements ``labels_grid(target, absolute)`` returning labels needed per
    cell in the shape of ``weights`` (``inf`` = never within ``max_budget``), ``h_summary`` and
    ``curve_band``.
    """

    weights: np.ndarray
    s0: float
    settings: _GridSettings

    @property
    def max_budget(self) -> int:
        return self.settings.max_budget

    def _interval(self, values: np.ndarray, weights: np.ndarray, level: float | None) -> tuple[float, float, float]:
        level = self.settings.level if level is None else level
        return (
            weighted_quantile(values, weights, 0.5),
            weighted_quantile(values, weights, 0.5 - level / 2),
            weighted_quantile(values, weights, 0.5 + level / 2),
        )

    def _summary(self, values: np.ndarray, weights: np.ndarray, level: float | None) -> dict[str, float]:
        """``{"mean", "median", "lo", "hi"}`` of ``values`` under ``weights`` (same shape)."""
        med, lo, hi = self._interval(values, weights, level)
        return {"mean": float(np.sum(values * weights)), "median": med, "lo": lo, "hi": hi}

    def labels_grid(self, target: float, absolute: bool = False) -> np.ndarray:
        raise NotImplementedError

    def h_summary(self, level: float | None = None) -> dict[str, float]:
        """``{"mean", "median", "lo", "hi"}`` of the posterior ceiling ``h``."""
        raise NotImplementedError

    def curve_band(
        self, n: Sequence[float] | np.ndarray, level: float | None = None, normalized: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posterior median and central band of the score at label counts ``n``: ``(median, lo, hi)``."""
        raise NotImplementedError

    def labels_needed(self, target: float, absolute: bool = False, level: float | None = None) -> LabelsNeeded:
        """Posterior median and central interval of the labels needed for ``target``.

        Args:
            target: normalised share in (0, 1], or an absolute score when ``absolute``.
            absolute: interpret ``target`` as a score on the metric's scale.
            level: interval coverage (default ``settings.level``).

        Returns:
            :class:`LabelsNeeded` with ``median``/``lo``/``hi`` in labels (``inf`` = never within
            ``max_budget``) and ``p_never``.
        """
        n = self.labels_grid(float(target), absolute)
        med, lo, hi = self._interval(n, self.weights, level)
        p_never = float(self.weights[np.isinf(n)].sum())
        return LabelsNeeded(target=float(target), median=med, lo=lo, hi=hi, p_never=p_never, absolute=absolute)

    def need(self, target: float) -> LabelsNeeded:
        """Same as :meth:`labels_needed` for a normalised target (the interface the policy uses)."""
        return self.labels_needed(target)

    def reach_probabilities(self, target: float, budgets: Iterable[float], absolute: bool = False) -> list[float]:
        """P(``target`` is reached with at most ``n`` labels) for each ``n`` in ``budgets`` (one inversion)."""
        n = self.labels_grid(float(target), absolute)
        return [float(self.weights[n <= b].sum()) for b in budgets]


@dataclass
class CurvePosterior(GridPosterior):
    """Posterior over ``(AUC, h)`` on a grid. Build it with :func:`fit_posterior`.

    Attributes:
        auc_grid: shape ``(A,)``; h_grid: shape ``(H,)``; weights: shape ``(A, H)``, sums to 1.
        s0: zero-shot score; prior_auc, prior_sd: the prior; observations: the points used;
        settings: the :class:`PosteriorSettings`; human_score: as given (or ``None``).
    """

    auc_grid: np.ndarray
    h_grid: np.ndarray
    weights: np.ndarray
    s0: float
    prior_auc: float
    prior_sd: float
    observations: tuple[Observation, ...]
    settings: PosteriorSettings
    human_score: float | None = None
    extra: dict = field(default_factory=dict)

    def auc_summary(self, level: float | None = None) -> dict[str, float]:
        """``{"mean", "median", "lo", "hi"}`` of the posterior AUC (central ``level`` interval)."""
        return self._summary(self.auc_grid, self.weights.sum(axis=1), level)

    def h_summary(self, level: float | None = None) -> dict[str, float]:
        """``{"mean", "median", "lo", "hi"}`` of the posterior ceiling ``h``."""
        return self._summary(self.h_grid, self.weights.sum(axis=0), level)

    def labels_grid(self, target: float, absolute: bool = False) -> np.ndarray:
        """Labels needed for ``target`` in every grid cell, shape ``(A, H)`` (``inf`` = never)."""
        log_n = math.log2(self.max_budget)
        inv_p = self.auc_grid / (1.0 - self.auc_grid)  # 1 / p
        if not absolute:
            if not 0.0 < target <= 1.0:
                raise DataError(f"normalised target must be in (0, 1], got {target!r}; pass absolute=True for a score")
            n = 2.0 ** (target**inv_p * log_n)
            return np.broadcast_to(n[:, None], self.weights.shape)
        span = self.h_grid - self.s0
        t = (target - self.s0) / span  # (H,)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_star = np.clip(t, 0.0, 1.0)[None, :] ** inv_p[:, None]
            n = 2.0 ** (x_star * log_n)
        n = np.where(t[None, :] <= 0.0, 0.0, n)
        return np.where(t[None, :] > 1.0 + 1e-12, np.inf, n)

    def curve_band(
        self, n: Sequence[float] | np.ndarray, level: float | None = None, normalized: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posterior median and central band of the score at label counts ``n``.

        Returns:
            ``(median, lo, hi)``, arrays of shape ``(len(n),)``: absolute scores, or normalised
            shares of the way from ``s0`` to ``h`` when ``normalized``.
        """
        x = np.minimum(np.atleast_1d(normalized_log_size(np.asarray(n, dtype=float), self.max_budget)), 1.0)
        y = x[None, :] ** ((1.0 - self.auc_grid) / self.auc_grid)[:, None]  # (A, K)
        out = np.empty((3, x.size))
        for k in range(x.size):
            vals = y[:, k][:, None] if normalized else self.s0 + (self.h_grid[None, :] - self.s0) * y[:, k][:, None]
            vals = np.broadcast_to(vals, self.weights.shape)
            out[:, k] = self._interval(vals, self.weights, level)
        return out[0], out[1], out[2]

    def as_dict(self, targets: Iterable[float] = TARGETS, absolute_targets: Iterable[float] = ()) -> dict:
        """JSON-ready summary: AUC and h summaries and labels needed per target (``None`` = never)."""
        return {
            "auc": self.auc_summary(),
            "h": self.h_summary(),
            "s0": self.s0,
            "prior_auc": self.prior_auc,
            "prior_sd": self.prior_sd,
            "n_points": len(self.observations),
            "labels_needed": {target_key(t): self.labels_needed(t).as_dict() for t in targets},
            "labels_needed_absolute": {
                target_key(t): self.labels_needed(t, absolute=True).as_dict() for t in absolute_targets
            },
            "level": self.settings.level,
        }


def _as_observations(points, default_n_eval: int) -> tuple[Observation, ...]:
    if points is None:
        return ()
    if isinstance(points, Mapping):
        points = [Observation(int(n), float(s)) for n, s in points.items()]
    out: list[Observation] = []
    for i, p in enumerate(points):
        if not isinstance(p, Observation):
            try:
                p = Observation(*p)
            except TypeError:
                raise DataError(f"point {i}: expected (n, score[, n_eval]) or Observation, got {p!r}") from None
        if isinstance(p.n, bool) or int(p.n) != p.n or p.n < 0:
            raise DataError(f"point {i}: label count must be a non-negative integer, got {p.n!r}")
        if not (isinstance(p.score, Real) and math.isfinite(p.score)):
            raise DataError(f"point {i} (n={p.n}): score must be a finite number, got {p.score!r}")
        n_eval = default_n_eval if p.n_eval is None else p.n_eval
        if int(n_eval) != n_eval or n_eval < 1:
            raise DataError(f"point {i} (n={p.n}): n_eval must be a positive integer, got {p.n_eval!r}")
        out.append(Observation(int(p.n), float(p.score), int(n_eval)))
    return tuple(out)


def check_prior(prior_auc: float, prior_sd: float, s0: float) -> None:
    """Raise :class:`DataError` unless the prior and the zero-shot score are finite and ``prior_sd > 0``."""
    for name, value in (("prior_auc", prior_auc), ("prior_sd", prior_sd), ("s0", s0)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise DataError(f"{name} must be a finite number, got {value!r}")
    if not prior_sd > 0:
        raise DataError(f"prior_sd must be > 0, got {prior_sd}")


def fit_posterior(
    prior_auc: float,
    prior_sd: float,
    s0: float,
    points: Iterable[Observation | tuple] | Mapping[int, float] | None = None,
    human_score: float | None = None,
    settings: PosteriorSettings | None = None,
) -> CurvePosterior:
    """Grid posterior over ``(AUC, h)`` given the CoS-Low prior and measured fine-tune points.

    Args:
        prior_auc: ``AUC'`` from the calibration (clipped into ``AUC_CLIP``).
        prior_sd: prior sd of AUC (> 0), e.g. ``Calibration.predict_sd(coslow)``.
        s0: measured zero-shot score on the eval set.
        points: measured ``(n, score[, n_eval])`` tuples, :class:`Observation` objects, or a
            mapping ``{n: score}``. Points with ``n = 0`` carry no information about AUC (the
            curve is pinned at ``s0``) and are ignored; ``n > N`` is treated as ``N``.
        human_score: the known ceiling (human score), or ``None``.
        settings: grid and noise settings.

    Returns:
        A :class:`CurvePosterior` (weights over an ``n_auc x n_h`` grid, ``n_h = 1`` when the
        human score is known).

    Raises:
        DataError: for non-finite or out-of-range inputs, or points that leave no posterior mass.
    """
    st = settings or PosteriorSettings()
    check_prior(prior_auc, prior_sd, s0)
    if not s0 < st.score_max:
        raise DataError(f"zero-shot score s0={s0} must be below score_max={st.score_max}")
    obs = _as_observations(points, st.default_n_eval)
    mu0 = float(min(max(prior_auc, AUC_CLIP[0]), AUC_CLIP[1]))

    # AUC grid: uniform, AUC' on it, symmetric around it where the (0, 1) bounds allow
    half = max(st.auc_halfwidth_sd * prior_sd, st.auc_min_halfwidth)
    lo_a, hi_a = max(mu0 - half, AUC_CLIP[0]), min(mu0 + half, AUC_CLIP[1])
    step = (hi_a - lo_a) / (st.n_auc - 1)
    k_lo = int(math.floor((mu0 - lo_a) / step + 1e-9))
    k_hi = int(math.floor((hi_a - mu0) / step + 1e-9))
    auc_grid = mu0 + step * np.arange(-k_lo, k_hi + 1)
    if auc_grid.size < 3:
        raise DataError(f"prior AUC {mu0} with sd {prior_sd} leaves fewer than 3 grid points; widen the prior")
    log_prior_auc = -0.5 * ((auc_grid - mu0) / prior_sd) ** 2

    # ceiling grid
    best = max([s0] + [o.score for o in obs])
    human = float(human_score) if isinstance(human_score, Real) and math.isfinite(human_score) else None
    if human is not None:
        h_grid = np.array([max(human, best, s0 + 1e-3)])  # a zero-shot at the ceiling: no gain left
    else:
        lo_h = max(best, s0 + 1e-6)
        h_grid = np.array([lo_h]) if lo_h >= st.score_max else np.linspace(lo_h, st.score_max, st.n_h)
    if not np.all(h_grid > s0):
        raise DataError(f"ceiling {h_grid.min()} must be above the zero-shot score {s0}")

    log_post = log_prior_auc[:, None] + np.zeros(h_grid.size)[None, :]
    used = tuple(o for o in obs if o.n > 0)
    if used:
        x = np.minimum(normalized_log_size(np.array([o.n for o in used], dtype=float), st.max_budget), 1.0)
        s = np.array([o.score for o in used])
        n_eval = np.array([o.n_eval for o in used], dtype=float)
        sd = np.maximum(np.sqrt(np.clip(s * (1 - s), 0.0, None) / n_eval), st.noise_floor)
        p = (1.0 - auc_grid) / auc_grid
        y = np.atleast_1d(x)[None, :] ** p[:, None]  # (A, K)
        mean = s0 + (h_grid[None, :, None] - s0) * y[:, None, :]  # (A, H, K)
        log_post = log_post + np.sum(-0.5 * ((s[None, None, :] - mean) / sd[None, None, :]) ** 2, axis=2)
    log_post -= logsumexp(log_post)
    weights = np.exp(log_post)
    return CurvePosterior(
        auc_grid=auc_grid,
        h_grid=h_grid,
        weights=weights,
        s0=float(s0),
        prior_auc=mu0,
        prior_sd=float(prior_sd),
        observations=used,
        settings=st,
        human_score=human,
    )
