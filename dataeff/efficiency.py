"""Data-efficiency curves: cleaning, AUC, the predicted curve ``x**p`` and labels needed.

Everything here follows ``method.md`` sections 1 and 3 and reproduces the reference
implementation (github r-three/dataefficiency, ``utils/calculate_per_task_auc.py``) exactly:
all 100 published AUCs in ``shared/reference/paper-results/auc_res`` are recomputed to within
1e-9 by :func:`data_efficiency_auc` (see ``tests/test_efficiency.py``).

The rules that make the published numbers come out exactly (checked on all 100 curves):

* Budgets kept: ``0`` and every budget ``50 <= n <= max_budget`` found in the file, on the grid
  or not (some files carry 750, 2200, 4000, 4700, 4800, 4880). Budgets 1-49 (the llama files'
  4/8/16/32) and budgets above the cut-off (full-data runs) are dropped.
* Every grid budget ``50 ... max_budget`` with no result is added with score 0 (then raised by
  the monotone step). A missing zero-shot point is *not* added (one published curve,
  qwen/overruling, has none).
* Monotone step: walking budgets upwards from a running best of 0, a score below the best so far
  is raised to it.
* Ceiling ``h = max(human score, best kept raw score)``; a missing (``null``) or non-numeric
  human score means ``h = best kept raw score``.
* ``y = (s - min s) / (h - min s)``, ``min`` over the *cleaned* curve.
* ``x = log2(max(n, 1)) / log2(max n)``, ``max n`` the largest budget of the cleaned curve
  (``max_budget`` itself whenever it is on the grid, as 5000 is).
* AUC = trapezoid area of ``(x, y)``.
* Metric: ``accuracy``, falling back per row to ``exact_string_match_accuracy``; ``f1`` for the
  free-form tasks in :data:`F1_TASKS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

import numpy as np

from dataeff.defaults import TARGETS
from dataeff.errors import DataError

#: The paper's fine-tuning budgets (0 = zero-shot).
BUDGET_GRID: tuple[int, ...] = (0, 50, 100, 200, 500, 1000, 2500, 5000)
#: Default cut-off N of the budget axis.
MAX_BUDGET = 5000
#: The smallest non-zero budget that counts towards the AUC (smaller ones are ignored).
MIN_FINETUNE_BUDGET = 50
#: Free-form tasks scored with token F1 instead of accuracy (as in the reference code).
F1_TASKS: frozenset[str] = frozenset(
    {"coqa", "squad_v2", "qa_wikidata", "disfl_qa", "sciq", "typescript_chunks", "polish_sequence_labeling"}
)
#: AUC values are clipped into this interval before the curve x**p is used (p must be finite, > 0).
AUC_CLIP: tuple[float, float] = (1e-3, 1.0 - 1e-3)

_ACCURACY_KEYS = ("accuracy", "exact_string_match_accuracy")


def metric_for_task(task: str) -> str:
    """Metric key the reference uses for ``task``: ``"f1"`` for :data:`F1_TASKS`, else ``"accuracy"``."""
    return "f1" if task in F1_TASKS else "accuracy"


# --------------------------------------------------------------------------- reading results


def _load_json(source: str | Path | Mapping, what: str) -> tuple[Mapping, str]:
    if isinstance(source, Mapping):
        return source, what
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; give the path of a {what} JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); give a readable UTF-8 JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, Mapping):
        raise DataError(f"{path}: expected a JSON object of {what}, got {type(data).__name__}")
    return data, str(path)


def _as_score(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise DataError(f"{where}: score must be a number, got {value!r}; fix or remove this entry")
    score = float(value)
    if not math.isfinite(score):
        raise DataError(f"{where}: score must be finite, got {value!r}; fix or remove this entry")
    return score


def _pick_metric(row: Mapping, metric: str | None, where: str) -> object:
    if metric is None or metric == "accuracy":
        for key in _ACCURACY_KEYS:
            if row.get(key) is not None:
                return row[key]
        if metric is None and len(row) == 1:
            return next(iter(row.values()))
        raise DataError(
            f"{where}: no 'accuracy' or 'exact_string_match_accuracy' key (keys: {sorted(row)}); "
            "pass metric=<one of these keys>"
        )
    if metric not in row:
        raise DataError(f"{where}: no {metric!r} score (keys: {sorted(row)}); pass another metric or fix the file")
    return row[metric]


def read_results(
    source: str | Path | Mapping,
    metric: str | None = None,
    *,
    max_budget: int = MAX_BUDGET,
    strict: bool = False,
    require_zero_shot: bool = True,
) -> dict[int, float]:
    """Read fine-tuning results in the paper's format into ``{budget: score}``.

    The format is ``{"<budget>": {"accuracy": x} | {"exact_string_match_accuracy": x} |
    {"f1": x, ...}, ...}`` (a JSON file path or an already parsed mapping).

    Args:
        source: path of the JSON file, or the parsed mapping.
        metric: which key holds the score. ``None`` (default): ``accuracy``, else
            ``exact_string_match_accuracy``, else the row's only key. ``"accuracy"`` falls back to
            ``exact_string_match_accuracy`` per row as the reference does. Any other name
            (e.g. ``"f1"``) must be present in every kept row.
        max_budget: cut-off N; budgets above it are dropped (or rejected when ``strict``).
        strict: raise :class:`DataError` for a budget above ``max_budget`` instead of dropping it.
        require_zero_shot: raise :class:`DataError` when budget 0 (zero-shot) is missing.

    Returns:
        ``{budget: score}`` sorted by budget, with budget 0 and budgets in
        ``[50, max_budget]`` only (budgets 1-49 are not part of the curve and are dropped).

    Raises:
        DataError: naming the file and budget for a non-integer budget, a non-numeric or
            non-finite score, a missing metric, no zero-shot point, or (strict) a budget above
            the cut-off.
    """
    data, name = _load_json(source, "fine-tuning results")
    out: dict[int, float] = {}
    for key, row in data.items():
        where = f"{name}: budget {key!r}"
        try:
            budget = int(str(key).strip())
        except ValueError:
            raise DataError(f"{where}: budget must be an integer number of labels") from None
        if budget < 0:
            raise DataError(f"{where}: budget must be >= 0")
        if budget > max_budget:
            if strict:
                raise DataError(f"{where}: budget above the cut-off {max_budget}; drop it or raise max_budget")
            continue
        if 0 < budget < MIN_FINETUNE_BUDGET:
            continue
        if not isinstance(row, Mapping):
            raise DataError(f'{where}: expected an object like {{"accuracy": 0.7}}, got {row!r}')
        if budget in out:
            raise DataError(f"{where}: budget {budget} appears twice; keep one entry")
        out[budget] = _as_score(_pick_metric(row, metric, where), where)
    if require_zero_shot and 0 not in out:
        raise DataError(f'{name}: no zero-shot result (budget 0); evaluate the base model and add it as "0"')
    if not out:
        raise DataError(f"{name}: no result with budget 0 or {MIN_FINETUNE_BUDGET}..{max_budget}")
    return dict(sorted(out.items()))


def read_human_scores(source: str | Path | Mapping) -> dict[str, float | None]:
    """Read ``human_eval.json`` (``{"<task>": {"score": x | null, "method": ...}}``).

    Returns:
        ``{task: score}`` with ``None`` where the score is null or not a number (e.g. the
        string ``"sequence_f1"``): such a task has no known ceiling.
    """
    data, name = _load_json(source, "human scores")
    out: dict[str, float | None] = {}
    for task, row in data.items():
        value = row.get("score") if isinstance(row, Mapping) else row
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        out[task] = float(value) if ok and value is not None else None
    return out


# --------------------------------------------------------------------------- the AUC


def _check_curve_input(results: Mapping[int, float]) -> dict[int, float]:
    if not isinstance(results, Mapping) or not results:
        raise DataError("results must be a non-empty mapping {budget: score}; read it with read_results()")
    clean: dict[int, float] = {}
    for budget, score in results.items():
        ok = isinstance(budget, (int, np.integer)) and not isinstance(budget, bool) and budget >= 0
        if not ok:
            raise DataError(f"budget {budget!r}: must be a non-negative integer (read JSON files with read_results())")
        clean[int(budget)] = _as_score(score, f"budget {budget}")
    return clean


def _kept(results: Mapping[int, float], max_budget: int) -> dict[int, float]:
    return {n: s for n, s in _check_curve_input(results).items() if n == 0 or MIN_FINETUNE_BUDGET <= n <= max_budget}


def clean_curve(results: Mapping[int, float], max_budget: int = MAX_BUDGET) -> tuple[np.ndarray, np.ndarray]:
    """The cleaned, non-decreasing data-efficiency curve (method.md section 1, step 1).

    Args:
        results: ``{budget: score}`` (e.g. from :func:`read_results`).
        max_budget: cut-off N.

    Returns:
        ``(budgets, scores)``: int64 and float64 arrays of equal length, sorted by budget. Budgets
        are 0 (if present), every result budget in ``[50, max_budget]`` and every grid budget in
        that range (missing ones with score 0 before the monotone step). Scores never decrease.

    Raises:
        DataError: for an empty mapping, a negative/non-integer budget or a non-finite score.
    """
    kept = _kept(results, max_budget)
    for g in BUDGET_GRID:
        if MIN_FINETUNE_BUDGET <= g <= max_budget:
            kept.setdefault(g, 0.0)
    budgets = np.array(sorted(kept), dtype=np.int64)
    raw = np.array([kept[int(n)] for n in budgets], dtype=np.float64)
    scores = np.maximum(np.maximum.accumulate(raw), 0.0)  # running best, starting from 0
    return budgets, scores


def normalized_log_size(n: float | np.ndarray, max_budget: float = MAX_BUDGET) -> float | np.ndarray:
    """Normalised log size ``x = log2(max(n, 1)) / log2(max_budget)`` (0 labels -> x = 0).

    Args:
        n: number(s) of labels, >= 0 (scalar or array).
        max_budget: N, the size mapped to x = 1 (> 1).

    Returns:
        x of the same shape as ``n``; values above 1 for ``n > max_budget``.
    """
    arr = np.asarray(n, dtype=np.float64)
    if np.any(~np.isfinite(arr)) or np.any(arr < 0):
        raise DataError(f"label counts must be finite and >= 0, got {n!r}")
    if not max_budget > 1:
        raise DataError(f"max_budget must be > 1, got {max_budget!r}")
    x = np.log2(np.maximum(arr, 1.0)) / np.log2(float(max_budget))
    return float(x) if np.ndim(x) == 0 else x


def _ceiling(best: float, human_score: float | None) -> float:
    if human_score is None or isinstance(human_score, bool) or not isinstance(human_score, Real):
        return best
    if not math.isfinite(human_score):
        return best
    return max(float(human_score), best)


def data_efficiency_auc(
    results: Mapping[int, float], human_score: float | None = None, max_budget: int = MAX_BUDGET
) -> float:
    """Data-efficiency AUC exactly as the reference computes it (method.md section 1).

    Args:
        results: ``{budget: score}`` (e.g. from :func:`read_results`).
        human_score: the task's human/ceiling score, or ``None`` if unknown.
        max_budget: cut-off N (default 5000).

    Returns:
        The AUC in [0, 1] (1 = the ceiling is reached at once, 0 = no gain by N).

    Raises:
        DataError: for bad input, or a flat curve whose ceiling equals its minimum (AUC undefined).
    """
    return summarize_curve(results, human_score, max_budget)["extrapolation_auc"]


def summarize_curve(
    results: Mapping[int, float], human_score: float | None = None, max_budget: int = MAX_BUDGET
) -> dict[str, float]:
    """The reference's per-task record: ``{"max_acc", "min_acc", "extrapolation_auc", "human_eval"}``.

    ``max_acc``/``min_acc`` are over the kept raw scores (budget 0 and 50..N, before the monotone
    step and before missing grid budgets are added); ``human_eval`` is the ceiling h used.
    """
    kept = _kept(results, max_budget)
    if not kept:
        raise DataError(f"no result with budget 0 or {MIN_FINETUNE_BUDGET}..{max_budget}")
    best, worst = max(kept.values()), min(kept.values())
    h = _ceiling(best, human_score)
    budgets, scores = clean_curve(results, max_budget)
    low = float(scores.min())
    if not h > low:
        raise DataError(f"flat curve: ceiling {h} is not above the lowest cleaned score {low}; the AUC is undefined")
    y = (scores - low) / (h - low)
    x = normalized_log_size(budgets, float(budgets.max()))
    auc = float(np.trapezoid(y, x))
    return {"max_acc": best, "min_acc": worst, "extrapolation_auc": auc, "human_eval": h}


# --------------------------------------------------------------------------- predicted curve


def _check_auc(auc: float) -> float:
    if isinstance(auc, bool) or not isinstance(auc, Real) or not 0.0 < auc < 1.0:
        raise DataError(f"AUC must be a number strictly between 0 and 1, got {auc!r}; clip it first")
    return float(auc)


def curve_exponent(auc: float) -> float:
    """Exponent ``p = (1 - auc) / auc`` of the predicted curve ``x**p`` (auc in (0, 1))."""
    auc = _check_auc(auc)
    return (1.0 - auc) / auc


def predicted_curve(auc: float, x: float | np.ndarray) -> float | np.ndarray:
    """Predicted normalised score ``y = x**p``, ``p = (1 - auc) / auc`` (method.md section 3).

    Args:
        auc: predicted AUC in (0, 1); the integral of the curve over [0, 1] equals it.
        x: normalised log size(s) in [0, 1] (values above 1 are clipped to 1).

    Returns:
        y in [0, 1], same shape as ``x``.
    """
    p = curve_exponent(auc)
    xx = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    y = xx**p
    return float(y) if np.ndim(y) == 0 else y


def _check_target(target: float) -> float:
    if isinstance(target, bool) or not isinstance(target, Real) or not 0.0 < target <= 1.0:
        raise DataError(
            f"normalised target must be in (0, 1] (a share of the way from zero-shot to ceiling), got {target!r}; "
            "convert an absolute score with normalized_target()"
        )
    return float(target)


def labels_needed(auc: float, target: float, max_budget: int = MAX_BUDGET) -> float:
    """Labels needed to reach a normalised target on the predicted curve (method.md section 3).

    ``x* = target ** (auc / (1 - auc))``, ``n* = 2 ** (x* * log2(max_budget))``.

    Args:
        auc: predicted AUC in (0, 1).
        target: normalised target in (0, 1], e.g. 0.9 = 90% of the way from zero-shot to ceiling.
        max_budget: N, where the curve reaches 1.

    Returns:
        n* as a float in [1, max_budget] (round up for a count).
    """
    auc = _check_auc(auc)
    target = _check_target(target)
    x_star = target ** (auc / (1.0 - auc))
    return float(2.0 ** (x_star * math.log2(max_budget)))


def normalized_target(score: float, s0: float, h: float) -> float:
    """Convert an absolute target score into a normalised one: ``(score - s0) / (h - s0)``.

    Args:
        score: the absolute target (e.g. 0.85 accuracy).
        s0: the zero-shot score.
        h: the ceiling (human score or assumed best achievable).

    Raises:
        DataError: when ``h <= s0``, ``score <= s0`` (already reached without labels) or
            ``score > h`` (above the assumed ceiling: never reached on this curve family).
    """
    for name, value in (("score", score), ("s0", s0), ("h", h)):
        _as_score(value, name)
    if not h > s0:
        raise DataError(f"ceiling h={h} must be above the zero-shot score s0={s0}")
    if score <= s0:
        raise DataError(f"target {score} is not above the zero-shot score {s0}: it needs no labels")
    if score > h:
        raise DataError(f"target {score} is above the ceiling {h}: the predicted curve never reaches it")
    return (score - s0) / (h - s0)


def absolute_score(target: float | np.ndarray, s0: float, h: float) -> float | np.ndarray:
    """Inverse of :func:`normalized_target`: ``s0 + target * (h - s0)``."""
    out = s0 + np.asarray(target, dtype=np.float64) * (h - s0)
    return float(out) if np.ndim(out) == 0 else out


# --------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class LabelsNeeded:
    """Labels needed for one target: a point value and an interval.

    Attributes:
        target: the target (normalised share, or an absolute score when ``absolute``).
        median: point estimate (float labels; ``inf`` = never within ``max_budget``).
        lo, hi: interval bounds (same units; ``hi`` may be ``inf``).
        p_never: probability that the target is never reached within ``max_budget``.
        absolute: whether ``target`` is an absolute score.
    """

    target: float
    median: float
    lo: float
    hi: float
    p_never: float = 0.0
    absolute: bool = False

    def as_dict(self) -> dict:
        def num(v: float) -> float | None:
            return None if not math.isfinite(v) else int(math.ceil(v))

        return {
            "target": self.target,
            "median": num(self.median),
            "lo": num(self.lo),
            "hi": num(self.hi),
            "p_never": self.p_never,
            "absolute": self.absolute,
        }


def target_key(target: float) -> str:
    """JSON key of a target: ``0.9 -> "0.9"``."""
    return f"{float(target):g}"


@dataclass(frozen=True)
class Prediction:
    """The paper's prediction from CoS-Low (method.md section 3).

    Attributes:
        coslow: the measured CoS-Low.
        coef, intercept: calibration ``AUC' = coef * coslow + intercept``.
        auc: ``AUC'`` clipped into :data:`AUC_CLIP`.
        auc_raw: ``AUC'`` before clipping.
        auc_interval: ``(lo, hi)`` of AUC (clipped), or ``None``.
        max_budget: N.
        labels_needed: ``{target: n*}`` rounded up to whole labels.
        labels_needed_interval: ``{target: (lo, hi)}`` (whole labels) when an AUC interval is
            given; a higher AUC needs fewer labels, so ``lo`` comes from the interval's top.
    """

    coslow: float
    coef: float
    intercept: float
    auc: float
    auc_raw: float
    max_budget: int
    labels_needed: dict[float, int]
    auc_interval: tuple[float, float] | None = None
    labels_needed_interval: dict[float, tuple[int, int]] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def clipped(self) -> bool:
        """True when ``AUC'`` fell outside :data:`AUC_CLIP` and was clipped."""
        return self.auc != self.auc_raw

    def need(self, target: float) -> LabelsNeeded:
        """Labels needed for a normalised ``target`` (any target in (0, 1], not only the stored ones)."""
        median = labels_needed(self.auc, target, self.max_budget)
        lo = hi = median
        if self.auc_interval is not None:
            lo = labels_needed(self.auc_interval[1], target, self.max_budget)
            hi = labels_needed(self.auc_interval[0], target, self.max_budget)
        return LabelsNeeded(target=float(target), median=median, lo=lo, hi=hi)

    def as_dict(self) -> dict:
        """JSON-ready: ``{"auc": ..., "labels_needed": {"0.9": n, ...}, ...}``."""
        out = {
            "coslow": self.coslow,
            "coef": self.coef,
            "intercept": self.intercept,
            "auc": self.auc,
            "auc_raw": self.auc_raw,
            "auc_clipped": self.clipped,
            "max_budget": self.max_budget,
            "labels_needed": {target_key(t): n for t, n in self.labels_needed.items()},
        }
        if self.auc_interval is not None:
            out["auc_interval"] = list(self.auc_interval)
        if self.labels_needed_interval is not None:
            out["labels_needed_interval"] = {target_key(t): list(iv) for t, iv in self.labels_needed_interval.items()}
        out.update(self.extra)
        return out


def clip_auc(auc: float) -> float:
    """Clip an AUC into :data:`AUC_CLIP` so that ``p = (1 - auc) / auc`` is finite and positive."""
    return float(min(max(float(auc), AUC_CLIP[0]), AUC_CLIP[1]))


def predict(
    coslow: float,
    coef: float,
    intercept: float,
    targets: Sequence[float] = TARGETS,
    max_budget: int = MAX_BUDGET,
    auc_interval: tuple[float, float] | None = None,
) -> Prediction:
    """Predict AUC and labels needed from CoS-Low (method.md section 3).

    Args:
        coslow: measured CoS-Low (a median cosine, in [-1, 1]).
        coef, intercept: the family's calibration ``AUC' = coef * coslow + intercept``.
        targets: normalised targets in (0, 1].
        max_budget: N.
        auc_interval: optional ``(lo, hi)`` of AUC (e.g. from
            :meth:`dataeff.calibration.Calibration.predict_auc`); clipped like the AUC.

    Returns:
        A :class:`Prediction`; labels needed are rounded up to whole labels.
    """
    coslow = _as_score(coslow, "CoS-Low")
    if not -1.0 <= coslow <= 1.0:
        raise DataError(f"CoS-Low is a cosine and must lie in [-1, 1], got {coslow}")
    coef = _as_score(coef, "calibration coefficient")
    intercept = _as_score(intercept, "calibration intercept")
    raw = coef * coslow + intercept
    auc = clip_auc(raw)
    interval = None
    if auc_interval is not None:
        lo, hi = (clip_auc(_as_score(v, "AUC interval bound")) for v in auc_interval)
        if lo > hi:
            raise DataError(f"AUC interval must be (lo, hi) with lo <= hi, got {auc_interval!r}")
        interval = (lo, hi)
    needs: dict[float, int] = {}
    needs_iv: dict[float, tuple[int, int]] | None = {} if interval else None
    for t in targets:
        t = _check_target(t)
        needs[t] = int(math.ceil(labels_needed(auc, t, max_budget)))
        if interval is not None and needs_iv is not None:
            needs_iv[t] = (
                int(math.ceil(labels_needed(interval[1], t, max_budget))),
                int(math.ceil(labels_needed(interval[0], t, max_budget))),
            )
    return Prediction(
        coslow=coslow,
        coef=coef,
        intercept=intercept,
        auc=auc,
        auc_raw=raw,
        max_budget=int(max_budget),
        labels_needed=needs,
        auc_interval=interval,
        labels_needed_interval=needs_iv,
    )
