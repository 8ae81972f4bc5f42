"""Replay real learning curves through the loop's estimate and decision (pure; no services).

A replay takes a measured learning curve as ground truth and shows the loop what it would have
seen while labeling: the zero-shot score, then each grid budget's score in order, each with
realistic noise (the eval set's binomial noise and fine-tune seed-to-seed noise). At every stage
it compares three answers to "how many labels for a target" with the truth, and runs the loop's
own decision step (:func:`dataeff.step.step`, the function the Prefect flow calls) under a label
cap.

Truth. The curve is cleaned and normalised exactly as the paper's AUC does (running best,
``y = (s - s0) / (h - s0)`` with ``h = max(human, best)``). The true crossing of target ``t`` is
where the cleaned curve first reaches ``t``, interpolated linearly in ``log2(labels)`` between the
two grid budgets around it (0 labels sits at ``log2(1) = 0``, as on the AUC's axis); ``inf`` when
the curve never reaches ``t`` within its last budget.

Errors are ``|log2(predicted / true)|`` with both sides clipped into ``[ERROR_FLOOR, ERROR_CEIL]``
(a prediction of "never" and a true "never" agree; a crossing below 25 labels is "at once").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataeff.calibration import Calibration
from dataeff.defaults import TARGETS
from dataeff.efficiency import (
    AUC_CLIP,
    MAX_BUDGET,
    clean_curve,
    data_efficiency_auc,
    labels_needed,
    metric_for_task,
    read_human_scores,
    read_results,
)
from dataeff.errors import DataError
from dataeff.step import StepInputs, StepSettings, step

STAGES = (0, 50, 100, 200, 500, 1000)
ERROR_FLOOR, ERROR_CEIL = 25.0, 2.0 * MAX_BUDGET
#: sd of the CoS-Low prediction of AUC: the paper's 8.6% mean absolute error as a Normal sd.
PAPER_PRIOR_SD = 0.086 * math.sqrt(math.pi / 2)


@dataclass(frozen=True)
class Curve:
    """A measured learning curve used as ground truth.

    Attributes:
        name: ``family/task`` (or any label).
        budgets: label counts, shape ``(K,)``, starting at 0 (zero-shot).
        scores: the cleaned (non-decreasing) scores at ``budgets``.
        human: the human/ceiling score, if known.
        family: model family (for the trivial prior: the mean AUC of the family's other tasks).
    """

    name: str
    budgets: tuple[int, ...]
    scores: tuple[float, ...]
    human: float | None = None
    family: str = ""

    @classmethod
    def from_results(
        cls, name: str, results: Mapping[int, float], human: float | None = None, family: str = ""
    ) -> Curve:
        """Clean ``{budget: score}`` as the paper's AUC does (budget 0 required)."""
        if 0 not in results:
            raise DataError(f"curve {name}: no zero-shot score (budget 0)")
        b, s = clean_curve(results)
        return cls(name, tuple(int(x) for x in b), tuple(float(x) for x in s), human, family)

    @property
    def s0(self) -> float:
        return self.scores[0]

    @property
    def ceiling(self) -> float:
        """The paper's ``h = max(human, best)``."""
        best = max(self.scores)
        return best if self.human is None else max(self.human, best)

    @property
    def auc(self) -> float:
        return data_efficiency_auc(dict(zip(self.budgets, self.scores)), self.human)

    def score_at(self, n: float) -> float:
        """True score after ``n`` labels: linear in ``log2(max(n, 1))`` between budgets, flat past the last."""
        lx = np.log2(np.maximum(np.array(self.budgets, dtype=float), 1.0))
        return float(np.interp(math.log2(max(n, 1.0)), lx, self.scores))

    def share_at(self, n: float) -> float:
        """True normalised share of the gain after ``n`` labels."""
        return (self.score_at(n) - self.s0) / (self.ceiling - self.s0)

    def crossing(self, target: float) -> float:
        """Labels where the cleaned curve first reaches ``target`` (``inf`` = never)."""
        y = (np.array(self.scores) - self.s0) / (self.ceiling - self.s0)
        lx = np.log2(np.maximum(np.array(self.budgets, dtype=float), 1.0))
        hit = np.nonzero(y >= target - 1e-12)[0]
        if hit.size == 0:
            return math.inf
        k = int(hit[0])
        if k == 0:
            return 1.0
        frac = (target - y[k - 1]) / (y[k] - y[k - 1])
        return float(2.0 ** (lx[k - 1] + frac * (lx[k] - lx[k - 1])))

    def oracle_budget(self, target: float, grid: Sequence[int], cap: int) -> int | None:
        """The first grid budget ``<= cap`` whose true share reaches ``target`` (``None`` = not within the cap)."""
        for b in sorted(grid):
            if 0 < b <= cap and self.share_at(b) >= target - 1e-12:
                return int(b)
        return None


def load_paper_curves(folder: str | Path) -> list[Curve]:
    """The paper's published curves (``finetune_results/`` + ``human_eval.json``) with a zero-shot point."""
    folder = Path(folder)
    humans = read_human_scores(folder / "human_eval.json")
    out = []
    for path in sorted((folder / "finetune_results").glob("*_full_result_v2.json")):
        family, task = path.name.removesuffix("_full_result_v2.json").split("_", 1)
        metric = metric_for_task(task)
        results = read_results(path, None if metric == "accuracy" else metric, require_zero_shot=False)
        if 0 not in results:
            continue
        out.append(Curve.from_results(f"{family}/{task}", results, humans.get(task), family))
    if not out:
        raise DataError(f"{folder}: no curves found under finetune_results/")
    return out


@dataclass(frozen=True)
class NoiseModel:
    """How a replayed measurement differs from the true curve.

    Attributes:
        n_eval: eval-set size (binomial noise).
        seed_noise: sd of fine-tune seed-to-seed noise (score units).
    """

    n_eval: int = 200
    seed_noise: float = 0.03

    def observe(self, true_score: float, rng: np.random.Generator) -> float:
        p = float(np.clip(true_score + rng.normal(0.0, self.seed_noise), 0.0, 1.0))
        return float(rng.binomial(self.n_eval, p) / self.n_eval)


def observe_curve(
    curve: Curve, budgets: Sequence[int], noise: NoiseModel, rng: np.random.Generator
) -> dict[int, float]:
    """One noisy measurement per budget (one fine-tune seed, one eval set)."""
    return {int(b): noise.observe(curve.score_at(b), rng) for b in sorted(set(budgets) | {0})}


def identity_calibration(prior_sd: float) -> Calibration:
    """A calibration that passes AUC' through (coef 1, intercept 0) with the given sd.

    The published curves carry no CoS-Low; the replay draws AUC' and feeds it where CoS-Low goes.
    """
    return Calibration(
        family="replay-identity",
        coef=1.0,
        intercept=0.0,
        default_sd=float(prior_sd),
        source="replay: AUC' fed as CoS-Low",
    )


def _clip(labels: float) -> float:
    """A label count clipped into ``[ERROR_FLOOR, ERROR_CEIL]`` ("never" = ``ERROR_CEIL``)."""
    return min(max(labels if math.isfinite(labels) else ERROR_CEIL, ERROR_FLOOR), ERROR_CEIL)


def log2_error(predicted: float, true: float) -> float:
    """``|log2(predicted / true)|`` with both clipped into ``[ERROR_FLOOR, ERROR_CEIL]``."""
    return abs(math.log2(_clip(predicted) / _clip(true)))


def covers(lo: float, hi: float, true: float) -> bool:
    """Whether the interval ``[lo, hi]`` (clipped like :func:`log2_error`) holds the true crossing."""
    return _clip(lo) - 1e-9 <= _clip(true) <= _clip(hi) + 1e-9


def curve_fit_need(observed: Mapping[int, float], target: float, human: float | None) -> float | None:
    """The plain curve fit: least-squares ``x^p`` through the observed points only (no prior).

    ``s0`` is the observed zero-shot score, ``h = max(human, best observed)``; ``None`` before
    any fine-tune beyond zero-shot.
    """
    pts = sorted((b, s) for b, s in observed.items() if b > 0)
    s0 = observed.get(0)
    if not pts or s0 is None:
        return None
    best = max(s for _, s in pts)
    h = best if human is None else max(human, best)
    if not h > s0:
        return math.inf
    x = np.log2(np.array([b for b, _ in pts], dtype=float)) / math.log2(MAX_BUDGET)
    y = (np.array([s for _, s in pts]) - s0) / (h - s0)
    aucs = np.linspace(AUC_CLIP[0], AUC_CLIP[1], 999)
    pred = np.minimum(x, 1.0)[None, :] ** ((1 - aucs) / aucs)[:, None]
    auc = float(aucs[np.argmin(((pred - y[None, :]) ** 2).sum(axis=1))])
    return labels_needed(auc, target)


def estimate_stages(
    curve: Curve,
    observed: Mapping[int, float],
    prior_auc: float,
    prior_sd: float,
    settings: Mapping[str, StepSettings],
    stages: Sequence[int] = STAGES,
    targets: Sequence[float] = TARGETS,
) -> list[dict]:
    """Errors of every method at every stage for one noisy replay of ``curve``.

    Args:
        observed: noisy measurements ``{budget: score}`` (from :func:`observe_curve`).
        prior_auc, prior_sd: the prior on AUC.
        settings: ``{method name: StepSettings}`` of the product's variants to compare.

    Returns:
        One row per (stage, target): ``{"stage", "target", "true", "errors": {method: e},
        "covered": {method: bool}}``.
    """
    cal = identity_calibration(prior_sd)
    pred = cal.predict(prior_auc, targets=targets)
    rows = []
    for stage in stages:
        seen = {b: s for b, s in observed.items() if b <= stage}
        outcomes = {
            name: step(
                StepInputs(
                    labeled=max(stage, 32), coslow=prior_auc, measured=seen, n_eval=None, human_score=curve.human
                ),
                cal,
                st,
            )
            for name, st in settings.items()
        }
        for t in targets:
            true = curve.crossing(t)
            prior_need = pred.need(t)
            errors: dict[str, float | None] = {"prior": log2_error(prior_need.median, true)}
            covered = {"prior": covers(prior_need.lo, prior_need.hi, true)}
            fit = curve_fit_need(seen, t, curve.human)
            errors["curve_fit"] = None if fit is None else log2_error(fit, true)
            for name, out in outcomes.items():
                need = out.assessed.need(t)
                errors[name] = log2_error(need.median, true)
                covered[name] = covers(need.lo, need.hi, true)
            rows.append(
                {
                    "stage": stage,
                    "target": t,
                    "true": true if math.isfinite(true) else None,
                    "errors": errors,
                    "covered": covered,
                }
            )
    return rows


@dataclass(frozen=True)
class PolicyResult:
    """How one replayed loop ended.

    Attributes:
        spent: training labels given when the loop stopped.
        rule: the rule that stopped it (``target_reached``, ``beyond_cap``, ``cap_reached``).
        oracle: the first grid budget within the cap whose true share reaches the target (``None``: none).
        reached_true_share: the true share at the budget where the loop declared the target reached.
        measured: budgets fine-tuned on the way.
        target: the primary target the loop labeled for (normalised share).
    """

    spent: int
    rule: str
    oracle: int | None
    reached_true_share: float | None
    measured: tuple[int, ...]
    target: float

    @property
    def reachable(self) -> bool:
        return self.oracle is not None

    @property
    def stopped_too_early(self) -> bool:
        """Stopped "beyond the cap" although the target was reachable within it."""
        return self.reachable and self.rule == "beyond_cap"

    @property
    def missed(self) -> bool:
        """Ended without declaring the target reached although it was reachable within the cap."""
        return self.reachable and self.rule != "target_reached"

    @property
    def overshoot(self) -> bool:
        """Kept labeling past the first grid budget that truly reached the target."""
        return self.oracle is not None and self.spent > self.oracle  # reachable

    @property
    def false_reached(self) -> bool:
        """Declared the target reached at a budget whose true share is below it."""
        return self.rule == "target_reached" and (self.reached_true_share or 0.0) < self.target - 1e-9


def replay_policy(
    curve: Curve,
    observed: Mapping[int, float],
    prior_auc: float,
    prior_sd: float,
    target: float,
    settings: StepSettings,
    n_eval: int,
    lowconf: int = 32,
    max_iterations: int = 100,
) -> PolicyResult:
    """Run the loop's decision step on a replayed curve until it stops.

    Each iteration measures every grid budget the labels cover (as the flow does), calls
    :func:`dataeff.step.step` and applies its decision. ``observed`` must hold every grid budget.
    """
    pol = settings.policy
    cal = identity_calibration(prior_sd)
    grid = [b for b in pol.budget_grid if b > 0]
    missing = [b for b in grid if b not in observed]
    if missing or 0 not in observed:
        raise DataError(f"replay of {curve.name}: no observation for budgets {missing or [0]}")
    labeled, measured = lowconf, {0: observed[0]}
    out = None
    for _ in range(max_iterations):
        for b in grid:
            if b <= labeled and b not in measured:
                measured[b] = observed[b]
        out = step(StepInputs(labeled, lowconf, lowconf, prior_auc, dict(measured), n_eval, curve.human), cal, settings)
        d = out.decision
        if d.action == "stop":
            break
        if d.action == "request_labels":
            labeled += d.n_labels
    if out is None:
        raise DataError(f"replay of {curve.name}: max_iterations must be >= 1, got {max_iterations}")
    d = out.decision
    reached_share = None
    if d.rule == "target_reached" and d.budget is not None:  # a target_reached decision names its budget
        reached_share = curve.share_at(d.budget)
    return PolicyResult(
        labeled,
        d.rule,
        curve.oracle_budget(target, grid, pol.label_cap),
        reached_share,
        tuple(sorted(b for b in measured if b > 0)),
        target,
    )


__all__ = [
    "Curve",
    "NoiseModel",
    "PolicyResult",
    "STAGES",
    "TARGETS",
    "covers",
    "curve_fit_need",
    "estimate_stages",
    "identity_calibration",
    "load_paper_curves",
    "log2_error",
    "observe_curve",
    "replay_policy",
]
