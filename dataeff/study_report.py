"""The end of a study: the calibration fit over its tasks and the markdown report (``docs/study.md``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from dataeff.calibration import Calibration, fit_calibration
from dataeff.efficiency import clip_auc, labels_needed
from dataeff.errors import DataError
from dataeff.replay import Curve, log2_error
from dataeff.study import StudySettings, TaskResult, coslow_mean

#: Fewer tasks with an AUC and a CoS-Low than this: no fit.
MIN_FIT_TASKS = 3


@dataclass
class StudyFit:
    """The calibration fitted on a study's tasks, or why there is none.

    Attributes:
        calibration: the fitted :class:`Calibration` (``None`` when skipped).
        rows: ``(task, CoS-Low low-confidence mean over draws, AUC)`` used.
        correlations: ``{"low": {"pearson", "spearman"}, "random": {...}}`` of CoS-Low with AUC
            across tasks (``None`` values with fewer than 3 tasks).
        note: why the fit was skipped, or ``""``.
    """

    calibration: Calibration | None
    rows: list[tuple[str, float, float]] = field(default_factory=list)
    correlations: dict = field(default_factory=dict)
    note: str = ""
    labels_check: dict = field(default_factory=dict)
    learners: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "calibration": self.calibration.as_dict() if self.calibration else None,
            "rows": [list(r) for r in self.rows],
            "correlations": self.correlations,
            "note": self.note,
            "labels_check": self.labels_check,
            "learners": self.learners,
        }


def fit_rows(results: Sequence[TaskResult], which: str = "low") -> list[tuple[str, float, float]]:
    """``(task, CoS-Low mean, AUC)`` of every task with both (``which``: ``"low"`` or ``"random"``)."""
    rows = []
    for r in results:
        c = coslow_mean(r.coslow_low if which == "low" else r.coslow_random)
        if c is not None and r.auc is not None and r.auc > 0:
            rows.append((r.task, c, float(r.auc)))
    return rows


def _correlation(rows: Sequence[tuple[str, float, float]]) -> dict:
    if len(rows) < 3:
        return {"pearson": None, "spearman": None, "n": len(rows)}
    x = np.array([r[1] for r in rows])
    y = np.array([r[2] for r in rows])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": None, "spearman": None, "n": len(rows)}
    return {"pearson": float(stats.pearsonr(x, y)[0]), "spearman": float(stats.spearmanr(x, y)[0]), "n": len(rows)}


def loo_labels_needed(results: Sequence[TaskResult], cutoff: int, targets: Sequence[float] = (0.5, 0.8)) -> dict:
    """What the calibration's answer is worth in labels: leave-one-task-out, from CoS-Low alone.

    For each task with a curve and a CoS-Low, a calibration fitted on the *other* tasks predicts the
    AUC, hence the labels needed for each normalised target on the study's axis (``N = cutoff``);
    the truth is where the task's measured (cleaned) curve crosses the target, interpolated in
    log labels. The trivial answer predicts the mean AUC of the other tasks. Errors are
    ``|log2(predicted / true)|`` (1.0 = off by a factor of two) with both clipped into
    [:data:`dataeff.replay.ERROR_FLOOR`, :data:`dataeff.replay.ERROR_CEIL`].

    Returns:
        ``{"targets", "n_tasks", "median_error": {"calibration", "trivial"},
        "tasks": [{"task", "target", "true", "calibration", "trivial", ...}]}``; ``n_tasks`` 0
        (and no medians) with fewer than ``MIN_FIT_TASKS + 1`` usable tasks.
    """
    rows = {t: (c, a) for t, c, a in fit_rows(results, "low")}
    usable = [r for r in results if r.task in rows and 0 in r.means()]
    out: dict = {"targets": list(targets), "n_tasks": 0, "median_error": {}, "tasks": []}
    if len(usable) < MIN_FIT_TASKS + 1:
        return out
    errs: dict[str, list[float]] = {"calibration": [], "trivial": []}
    for r in usable:
        others = [(t, c, a) for t, (c, a) in rows.items() if t != r.task]
        cal = fit_calibration(others, "loo", fit_kind="lora", max_budget=cutoff)
        auc_cal = clip_auc(cal.coef * rows[r.task][0] + cal.intercept)
        auc_triv = clip_auc(float(np.mean([a for _, _, a in others])))
        curve = Curve.from_results(r.task, r.means())
        for t in targets:
            true = curve.crossing(t)
            pred = {"calibration": labels_needed(auc_cal, t, cutoff), "trivial": labels_needed(auc_triv, t, cutoff)}
            row = {"task": r.task, "target": t, "true": true, "auc_true": rows[r.task][1]}
            row |= {"auc_calibration": auc_cal, "auc_trivial": auc_triv}
            for k, v in pred.items():
                row[k] = v
                errs[k].append(log2_error(v, true))
            out["tasks"].append(row)
    out["n_tasks"] = len(usable)
    out["median_error"] = {k: float(np.median(v)) for k, v in errs.items()}
    return out


def fit_study(
    results: Sequence[TaskResult],
    family: str,
    settings: StudySettings,
    *,
    provenance: Mapping | None = None,
    source: str = "",
) -> StudyFit:
    """Fit ``AUC = c * CoS-Low + I`` (scikit-learn OLS, leave-one-task-out errors) on a study's tasks.

    CoS-Low of a task is the mean over its LoRA draws of the low-confidence statistic.
    With fewer than :data:`MIN_FIT_TASKS` tasks (or equal CoS-Low values) the fit is skipped and
    ``note`` says why.
    """
    rows = fit_rows(results, "low")
    corr = {"low": _correlation(rows), "random": _correlation(fit_rows(results, "random"))}
    if len(rows) < MIN_FIT_TASKS:
        return StudyFit(
            None,
            rows,
            corr,
            f"fit skipped: {len(rows)} task(s) with both an AUC and CoS-Low, at least {MIN_FIT_TASKS} needed",
        )
    try:
        cal = fit_calibration(
            rows,
            family,
            source=source or f"dataeff study {settings.study_name}",
            fit_kind="lora",
            dtype=(provenance or {}).get("dtype") or settings.dtype,  # the resolved dtype the study ran in
            provenance=dict(provenance or {}),
            max_budget=settings.cutoff,
        )
    except DataError as exc:
        return StudyFit(None, rows, corr, f"fit skipped: {exc}")
    fit = StudyFit(cal, rows, corr, labels_check=loo_labels_needed(results, settings.cutoff))
    fit.learners = learners_fit(results, settings.cutoff)
    return fit


#: A task "learns" when its best fine-tuned mean beats the majority-class score by at least this.
MIN_GAIN_OVER_MAJORITY = 0.05


def gain_over_majority(r: TaskResult) -> float | None:
    """Best fine-tuned mean score minus the majority-class score (``None`` without either)."""
    tuned = [v for b, v in r.means().items() if b > 0]
    return None if not tuned or r.majority is None else max(tuned) - r.majority


def learners_fit(results: Sequence[TaskResult], cutoff: int) -> dict:
    """The same fit on the tasks that learn beyond the majority class (a curve that only learns the
    answer format says little about data efficiency): ``{"tasks", "n", "coef", "intercept", "loo_mae",
    "baseline_loo_mae", "pearson", "spearman"}``, or ``{"tasks", "n"}`` when fewer than
    ``MIN_FIT_TASKS`` such tasks."""
    keep = {r.task for r in results if (gain_over_majority(r) or 0.0) >= MIN_GAIN_OVER_MAJORITY}
    rows = [row for row in fit_rows(results, "low") if row[0] in keep]
    out: dict = {"tasks": [r[0] for r in rows], "n": len(rows), "min_gain": MIN_GAIN_OVER_MAJORITY}
    if len(rows) < MIN_FIT_TASKS:
        return out
    try:
        cal = fit_calibration(rows, "learners", fit_kind="lora", max_budget=cutoff)
    except DataError:
        return out
    c = _correlation(rows)
    return out | {
        "coef": cal.coef,
        "intercept": cal.intercept,
        "loo_mae": cal.loo_mae,
        "baseline_loo_mae": cal.baseline_loo_mae,
        "pearson": c["pearson"],
        "spearman": c["spearman"],
    }


# --------------------------------------------------------------------------- markdown


def _num(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _pm(mean, sd, digits: int = 3) -> str:
    return "–" if mean is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _interval(iv) -> str:
    return "" if not iv else f" [{iv[0]:.3f}, {iv[1]:.3f}]"


def _labels(n: float) -> str:
    return "never" if not np.isfinite(n) else f"{n:,.0f}"


def _gain(r: TaskResult) -> str:
    """Best mean fine-tuned score minus the majority-class score: what the model learned beyond
    answering the commonest label (near 0 or below: a format-learning curve)."""
    gain = gain_over_majority(r)
    return "–" if gain is None else f"{gain:+.3f}"


def render_markdown(
    results: Sequence[TaskResult], settings: StudySettings, fit: StudyFit, *, provenance: Mapping | None = None
) -> str:
    """``docs/study.md``: one row per task, then the fit (or why it was skipped) and the settings."""
    prov = dict(provenance or {})
    budgets = list(settings.budgets)
    lines = [f"# Calibration study: {settings.model}", ""]
    lines.append(
        f"Model `{settings.model}`"
        + (f" (family `{prov['family']}`)" if prov.get("family") else "")
        + f", dtype {prov.get('dtype') or settings.dtype or 'default'}, device {prov.get('device') or settings.device or 'default'}. "
        f"Budgets {', '.join(map(str, budgets))}; seeds {', '.join(map(str, settings.seeds))}; "
        f"eval split {settings.eval_size}; CoS-Low on k={settings.k} examples over {settings.draws} LoRA draws "
        f"(r={settings.lora.r}, alpha={settings.lora.alpha})."
    )
    lines.append("")
    lines.append(
        f"AUC as the paper computes it: N = {settings.cutoff} (normalised log size axis "
        f"x = log2(max(n, 1)) / log2(N)); budgets 1-49 are not part of the curve; grid budgets up to N "
        f"without a result count as the best score so far; ceiling h = max(human score, best mean score), "
        f"the best mean score where no human score is given. Scores: mean ± sd over seeds on the eval split "
        f"(zero-shot is greedy and seed-free, measured once)."
    )
    lines.append("")
    head = [
        "task",
        "pool / eval",
        "chance",
        "majority",
        *[("zero-shot" if b == 0 else str(b)) for b in budgets],
        "AUC",
        "ceiling",
        "best − majority",
        "CoS-Low low-conf",
        "CoS-Low random",
        "seconds",
    ]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for r in results:
        means, sds = r.means(), r.sds()
        cells = [r.task, f"{r.n_pool} / {r.n_eval}", _num(r.chance), _num(r.majority)]
        for b in budgets:
            if b in r.dropped:
                cells.append("dropped")
            elif b in means:
                cells.append(_num(means[b]) if b == 0 else _pm(means[b], sds[b]))
            else:
                cells.append("failed" if any(f["budget"] == b for f in r.failures) else "–")
        low = r.coslow_low or {}
        cells += [
            _num(r.auc),
            _num(r.ceiling),
            _gain(r),
            _pm(low.get("mean"), low.get("std", 0.0)) if low else "–",
            _num(coslow_mean(r.coslow_random)),
            f"{r.seconds:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r.task}: {m}" for r in results for m in [*r.messages, r.auc_note] if m]
    notes += [
        f"- {r.task}: fine-tune at budget {f['budget']}, seed {f['seed']} failed: {f['error']}"
        for r in results
        for f in r.failures
    ]
    if notes:
        lines += ["", "Notes:", *notes]
    lines += ["", "## Calibration fit", ""]
    cal = fit.calibration
    if cal is None:
        lines.append(fit.note or "fit skipped")
    else:
        lines += [
            f"AUC = {cal.coef:.3f}{_interval(cal.coef_interval)} × CoS-Low + {cal.intercept:.3f}{_interval(cal.intercept_interval)} "
            f"(95% intervals; {cal.n_tasks} tasks; CoS-Low = mean of the low-confidence draws; fit kind {cal.fit_kind}, dtype {cal.dtype or 'default'}).",
            "",
            f"- leave-one-task-out MAE {_num(cal.loo_mae)} vs {_num(cal.baseline_loo_mae)} for always predicting the mean AUC of the other tasks",
            f"- leave-one-task-out relative error {_num(cal.loo_relative_error)}",
            f"- residual sd {_num(cal.residual_std)}",
        ]
    for which, label in (("low", "CoS-Low low-confidence"), ("random", "CoS-Low random (ablation)")):
        c = fit.correlations.get(which) or {}
        lines.append(
            f"- correlation of {label} with AUC across {c.get('n', 0)} tasks: Pearson {_num(c.get('pearson'))}, "
            f"Spearman {_num(c.get('spearman'))}"
        )
    lines.append(f"- N = {settings.cutoff}; ceiling = max(human score, best mean score)")
    learn = fit.learners or {}
    if learn.get("loo_mae") is not None:
        lines.append(
            f"- on the {learn['n']} tasks that learn beyond the majority class (best − majority ≥ {learn['min_gain']:.2f}: "
            f"{', '.join(learn['tasks'])}): AUC = {learn['coef']:.3f} × CoS-Low + {learn['intercept']:.3f}, "
            f"leave-one-task-out MAE {learn['loo_mae']:.3f} vs {learn['baseline_loo_mae']:.3f} predicting the mean, "
            f"Pearson {_num(learn['pearson'])}, Spearman {_num(learn['spearman'])}"
        )
    elif learn:
        lines.append(
            f"- only {learn['n']} task(s) learn beyond the majority class (best − majority ≥ {learn['min_gain']:.2f}): "
            "too few for a separate fit"
        )
    check = fit.labels_check or {}
    if check.get("n_tasks"):
        med = check["median_error"]
        lines += [
            "",
            "### The answer in labels, leave one task out",
            "",
            f"From CoS-Low alone, a calibration fitted on the other {check['n_tasks'] - 1} tasks predicts the labels "
            f"needed for {', '.join(f'{t:.0%}' for t in check['targets'])} of the achievable gain; the truth is where "
            "the task's measured curve crosses the target. Median |log2(predicted / true)| (1.0 = off by a factor of "
            f"two): **calibration {med['calibration']:.2f}** vs {med['trivial']:.2f} predicting the mean AUC of the "
            "other tasks.",
            "",
            "| task | target | true labels | calibration | trivial |",
            "|---|---|---|---|---|",
        ]
        for row in check["tasks"]:
            cells = [
                row["task"],
                f"{row['target']:.0%}",
                *(_labels(row[k]) for k in ("true", "calibration", "trivial")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
