"""A curve posterior whose shape can stay flat and rise late, or saturate early.

The paper's curve ``y = x^p`` is pinned at ``(0, 0)`` and ``(1, 1)`` and has one shape per AUC.
Real learning curves are S-shaped in log size far more often (on the 100 published curves the
best-fitting shape below has a median squared error 4x smaller than the best ``x^p``). This
module keeps the paper's AUC as the quantity the CoS-Low prior speaks about and adds one shape
parameter.

Model. With ``x(n) = log2(max(n, 1)) / log2(N)`` the score after ``n`` labels is

    s(n) = s0 + (top - s0) * I_x(alpha, beta),    alpha = beta * (1 - a) / a

where ``I_x`` is the regularised incomplete beta function (the CDF of a Beta(alpha, beta)
distribution), ``a`` is the area under the shape over ``[0, 1]`` and ``top`` is the score at ``N``.
``beta = 1`` gives ``I_x(p, 1) = x^p`` with ``p = (1 - a) / a``: the paper's family is the slice
``beta = 1``. ``beta > 1`` flattens the curve near ``N`` (early saturation); ``alpha > 1`` keeps it
flat near 0 (late rise).

The paper normalises by the ceiling ``h = max(human score, best score)``, so the task's AUC
(the number the calibration predicts) is ``AUC = a * (top - s0) / (h - s0)`` with
``h = max(human, top)`` (``h = top`` without a human score).

Unknowns ``(a, beta, top)`` on a grid:

* prior on the task's AUC: ``Normal(AUC', sd^2)`` from the calibration (the CoS-Low prior);
* prior on ``log beta``: ``Normal(0, beta_prior_sd^2)``, centred on the paper's shape ``x^p``;
* prior on ``top``: uniform on ``[max(s0, best observed - 2 sd), score_max]``;
* likelihood of each measured ``(n, score)``: Student-t (``df`` degrees of freedom, robust to one
  bad fine-tune) with scale ``sqrt(score (1 - score) / n_eval + seed_noise_sd^2)``: eval-set
  binomial noise plus fine-tune seed-to-seed noise.

A normalised target ``t`` is reached where ``s(n) = s0 + t (h - s0)``, i.e. where
``I_x(alpha, beta) = t (h - s0) / (top - s0)``; above 1 the target is never reached within ``N``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import betainc, betaincinv, logsumexp

from dataeff.defaults import TARGETS
from dataeff.efficiency import AUC_CLIP, MAX_BUDGET, normalized_log_size, target_key
from dataeff.errors import DataError
from dataeff.posterior import GridPosterior, Observation, _as_observations, check_prior


@dataclass(frozen=True)
class FlexSettings:
    """Grid, prior and noise settings of :func:`fit_flex_posterior`.

    Attributes:
        n_auc: grid points of the shape's area ``a`` on ``[auc_min, auc_max]``.
        auc_min, auc_max: range of ``a``.
        n_beta: grid points of ``beta``, log-spaced on ``[beta_min, beta_max]`` (the defaults put
            ``beta = 1``, the paper's shape, exactly on the grid: 2^-2 .. 2^6 in steps of 2^(1/3)).
        beta_min, beta_max: range of ``beta`` (1 = the paper's ``x^p``).
        beta_prior_sd: sd of the Normal prior on ``log beta`` (natural log), centred at 0.
            On the 100 published curves the best-fitting ``log beta`` has median 0.87 and sd 1.07;
            the prior stays centred on the paper's shape and wide enough to reach them.
        n_top: grid points of the score at ``N``.
        seed_noise_sd: fine-tune seed-to-seed noise (score units) added to the binomial noise.
        df: degrees of freedom of the Student-t likelihood (``inf`` = Normal).
        default_n_eval: eval-set size assumed for a point given without one.
        score_max: the largest possible score.
        max_budget: N.
        level: coverage of the reported central intervals.
    """

    n_auc: int = 49
    auc_min: float = 0.02
    auc_max: float = 0.98
    n_beta: int = 25
    beta_min: float = 0.25
    beta_max: float = 64.0
    beta_prior_sd: float = 1.25
    n_top: int = 40
    seed_noise_sd: float = 0.03
    df: float = 4.0
    default_n_eval: int = 200
    score_max: float = 1.0
    max_budget: int = MAX_BUDGET
    level: float = 0.8

    def __post_init__(self) -> None:
        if self.n_auc < 3 or self.n_beta < 1 or self.n_top < 1:
            raise DataError(
                f"grid too small: n_auc={self.n_auc} (>= 3), n_beta={self.n_beta}, n_top={self.n_top} (>= 1)"
            )
        if not 0 < self.auc_min < self.auc_max < 1:
            raise DataError(f"need 0 < auc_min < auc_max < 1, got {self.auc_min}, {self.auc_max}")
        if not 0 < self.beta_min <= self.beta_max:
            raise DataError(f"need 0 < beta_min <= beta_max, got {self.beta_min}, {self.beta_max}")
        if not 0 < self.level < 1:
            raise DataError(f"level must be in (0, 1), got {self.level}")
        if not self.seed_noise_sd >= 0 or not self.df > 0 or not self.beta_prior_sd > 0:
            raise DataError("seed_noise_sd must be >= 0, df and beta_prior_sd > 0")


@dataclass
class FlexPosterior(GridPosterior):
    """Posterior over ``(a, beta, top)`` on a grid. Build it with :func:`fit_flex_posterior`.

    Attributes:
        a_grid: shape ``(A,)``; beta_grid: ``(B,)``; top_grid: ``(T,)``; weights: ``(A, B, T)``,
        sums to 1. s0: zero-shot score; prior_auc, prior_sd: the CoS-Low prior on the task's AUC;
        observations: the points used; settings; human_score: as given (or ``None``).
    """

    a_grid: np.ndarray
    beta_grid: np.ndarray
    top_grid: np.ndarray
    weights: np.ndarray
    s0: float
    prior_auc: float
    prior_sd: float
    observations: tuple[Observation, ...]
    settings: FlexSettings
    human_score: float | None = None
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ derived grids
    @property
    def alpha(self) -> np.ndarray:
        """``alpha`` per ``(a, beta)`` cell, shape ``(A, B)``."""
        return self.beta_grid[None, :] * (1.0 - self.a_grid[:, None]) / self.a_grid[:, None]

    @property
    def ceiling_grid(self) -> np.ndarray:
        """The paper's ceiling ``h = max(human, top)`` per ``top``, shape ``(T,)``."""
        if self.human_score is None:
            return self.top_grid
        return np.maximum(self.top_grid, self.human_score)

    def task_auc_grid(self) -> np.ndarray:
        """The task's AUC (the calibrated quantity) per cell, shape ``(A, 1, T)``."""
        ratio = (self.top_grid - self.s0) / (self.ceiling_grid - self.s0)
        return self.a_grid[:, None, None] * ratio[None, None, :]

    # ------------------------------------------------------------------ summaries
    def auc_summary(self, level: float | None = None) -> dict[str, float]:
        """``{"mean", "median", "lo", "hi"}`` of the task's AUC (the paper's definition)."""
        return self._summary(np.broadcast_to(self.task_auc_grid(), self.weights.shape), self.weights, level)

    def h_summary(self, level: float | None = None) -> dict[str, float]:
        """``{"mean", "median", "lo", "hi"}`` of the ceiling ``h = max(human, top)``."""
        return self._summary(self.ceiling_grid, self.weights.sum(axis=(0, 1)), level)

    def top_summary(self, level: float | None = None) -> dict[str, float]:
        """``{"mean", "median", "lo", "hi"}`` of the score the curve reaches at ``N``."""
        return self._summary(self.top_grid, self.weights.sum(axis=(0, 1)), level)

    def labels_grid(self, target: float, absolute: bool = False) -> np.ndarray:
        """Labels needed for ``target`` in every cell, shape ``(A, B, T)`` (``inf`` = never within N)."""
        target = float(target)
        span = self.top_grid - self.s0  # (T,)
        if absolute:
            t_eff = (target - self.s0) / span
        else:
            if not 0.0 < target <= 1.0:
                raise DataError(f"normalised target must be in (0, 1], got {target!r}; pass absolute=True for a score")
            t_eff = target * (self.ceiling_grid - self.s0) / span
        al, be = self.alpha, np.broadcast_to(self.beta_grid[None, :], (self.a_grid.size, self.beta_grid.size))
        log_n = math.log2(self.max_budget)
        out = np.empty(self.weights.shape)
        # t_eff takes few distinct values (all equal without a human score): invert once per value.
        uniq, inv = np.unique(np.round(t_eff, 12), return_inverse=True)
        for k, t in enumerate(uniq):
            if t <= 0:
                n = np.zeros(al.shape)
            elif t > 1.0 + 1e-12:
                n = np.full(al.shape, np.inf)
            else:
                x_star = betaincinv(al, be, min(t, 1.0))
                n = 2.0 ** (x_star * log_n)
            out[:, :, inv == k] = n[:, :, None]
        return out

    def _shape_at(self, n: Sequence[float] | np.ndarray) -> np.ndarray:
        x = np.minimum(np.atleast_1d(normalized_log_size(np.asarray(n, dtype=float), self.max_budget)), 1.0)
        return betainc(self.alpha[..., None], self.beta_grid[None, :, None], x[None, None, :])  # (A, B, K)

    def curve_band(
        self, n: Sequence[float] | np.ndarray, level: float | None = None, normalized: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posterior median and central band of the score at label counts ``n``.

        Returns:
            ``(median, lo, hi)``, arrays of shape ``(len(n),)``: absolute scores, or shares of the
            way from ``s0`` to the ceiling ``h`` when ``normalized``.
        """
        shape = self._shape_at(n)
        span = self.top_grid - self.s0
        out = np.empty((3, shape.shape[-1]))
        for k in range(shape.shape[-1]):
            gain = shape[:, :, k, None] * span[None, None, :]
            vals = gain / (self.ceiling_grid - self.s0)[None, None, :] if normalized else self.s0 + gain
            out[:, k] = self._interval(vals, self.weights, level)
        return out[0], out[1], out[2]

    def as_dict(self, targets: Iterable[float] = TARGETS, absolute_targets: Iterable[float] = ()) -> dict:
        """JSON-ready summary: AUC, ceiling and labels needed per target (``None`` = never)."""
        return {
            "model": "beta",
            "auc": self.auc_summary(),
            "h": self.h_summary(),
            "top": self.top_summary(),
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


def _student_t_logpdf(z: np.ndarray, df: float) -> np.ndarray:
    if math.isinf(df):
        return -0.5 * z**2
    return -0.5 * (df + 1.0) * np.log1p(z**2 / df)


def fit_flex_posterior(
    prior_auc: float,
    prior_sd: float,
    s0: float,
    points: Iterable[Observation | tuple] | Mapping[int, float] | None = None,
    human_score: float | None = None,
    settings: FlexSettings | None = None,
) -> FlexPosterior:
    """Grid posterior over ``(a, beta, top)`` given the CoS-Low prior and measured fine-tunes.

    Args:
        prior_auc: ``AUC'`` from the calibration (the task's AUC, clipped into ``AUC_CLIP``).
        prior_sd: prior sd of the task's AUC (> 0), e.g. ``Calibration.predict_sd(coslow)``.
        s0: measured zero-shot score on the eval set.
        points: measured ``(n, score[, n_eval])`` tuples, :class:`Observation` objects, or
            ``{n: score}``. ``n = 0`` points are ignored (the curve starts at ``s0``).
        human_score: the known ceiling, or ``None``.
        settings: grid, prior and noise settings.

    Returns:
        A :class:`FlexPosterior` with weights over an ``n_auc x n_beta x n_top`` grid.

    Raises:
        DataError: for non-finite or out-of-range inputs.
    """
    st = settings or FlexSettings()
    check_prior(prior_auc, prior_sd, s0)
    if not 0.0 <= s0 < st.score_max:
        raise DataError(f"zero-shot score s0={s0} must be in [0, score_max={st.score_max})")
    human = None
    if human_score is not None and math.isfinite(float(human_score)):
        human = float(human_score)
    obs = _as_observations(points, st.default_n_eval)
    used = tuple(o for o in obs if o.n > 0)
    for o in used:
        if not 0.0 <= o.score <= st.score_max:
            raise DataError(f"point n={o.n}: score {o.score} outside [0, {st.score_max}]")
    mu0 = float(min(max(prior_auc, AUC_CLIP[0]), AUC_CLIP[1]))

    a_grid = np.linspace(st.auc_min, st.auc_max, st.n_auc)
    beta_grid = np.exp(np.linspace(math.log(st.beta_min), math.log(st.beta_max), st.n_beta))

    if used:
        s = np.array([o.score for o in used])
        n_eval = np.array([o.n_eval for o in used], dtype=float)
        sd = np.sqrt(np.clip(s * (1 - s), 1e-4, None) / n_eval + st.seed_noise_sd**2)
        best = float(np.max(s - 2.0 * sd))
    else:
        best = s0
    lo_top = max(best, s0) + 1e-3
    top_grid = np.array([st.score_max]) if lo_top >= st.score_max else np.linspace(lo_top, st.score_max, st.n_top)

    post = FlexPosterior(
        a_grid,
        beta_grid,
        top_grid,
        np.ones((a_grid.size, beta_grid.size, top_grid.size)),
        float(s0),
        mu0,
        float(prior_sd),
        used,
        st,
        human,
    )
    log_w = -0.5 * ((post.task_auc_grid() - mu0) / prior_sd) ** 2  # (A, 1, T)
    log_w = log_w - 0.5 * (np.log(beta_grid) / st.beta_prior_sd)[None, :, None] ** 2  # (A, B, T)
    if used:
        shape = post._shape_at([o.n for o in used])  # (A, B, K)
        mean = s0 + shape[:, :, None, :] * (top_grid - s0)[None, None, :, None]  # (A, B, T, K)
        z = (s[None, None, None, :] - mean) / sd
        log_w = log_w + _student_t_logpdf(z, st.df).sum(axis=-1)
    log_w = log_w - logsumexp(log_w)
    post.weights = np.exp(log_w)
    return post


__all__ = ["FlexPosterior", "FlexSettings", "fit_flex_posterior"]
