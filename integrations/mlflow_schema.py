"""dataeff's MLflow run schema: the run kinds, and each kind's run built from dataeff's own dataclasses.

:data:`RUN_KINDS` is the one table of what is written: per kind, the fields hashed into its run
key, its run name, and the params, metrics and artifacts it records (fnmatch patterns such as
``coslow_draw_*``). The builders (:func:`estimate_run`, :func:`finetune_run`, ...) turn a
:class:`~dataeff.coslow.CosLowResult`, :class:`~dataeff.efficiency.Prediction`,
:class:`~dataeff.finetune.FinetuneResult` or :class:`~dataeff.policy.Decision` into a
:class:`RunSpec` by reading their attributes, and :meth:`RunKind.spec` refuses a name the table
does not declare. Pure: no MLflow client (the writing is :mod:`integrations.mlflow_tracking`).
Documented for people in docs/mlflow-schema.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from dataeff.coslow import CosLowResult
from dataeff.efficiency import LabelsNeeded, Prediction, target_key
from dataeff.errors import DataError
from dataeff.finetune import FinetuneResult, FinetuneSettings
from dataeff.models import LoraSettings
from dataeff.policy import Decision
from integrations.mlflow_runs import TAG_RUN_KEY, finite, json_ready, run_key
from integrations.secrets import redact

CALIBRATION_EXPERIMENT = "dataeff-calibrations"

TAG_KIND = "dataeff.kind"
TAG_PROJECT = "dataeff.project"
TAG_MODEL = "dataeff.model"
TAG_LABEL_HASH = "dataeff.label_hash"
TAG_BUDGET = "dataeff.budget"
TAG_FAMILY = "dataeff.family"
TAG_ITERATION = "dataeff.iteration"
TAG_ACTION = "dataeff.action"
TAG_REASON = "dataeff.reason"
TAG_PURPOSE = "dataeff.purpose"
TAG_NOTE = "mlflow.note.content"  # shown as the run's description in the MLflow UI
TAG_NEEDS_FROM = "dataeff.labels_needed_from"  # "posterior" or "prediction": what labels_needed_* come from
# MLflow 3's experiment type, for clients and UIs that read it (MLflow 3.17's own UI follows its workflow
# switch instead: links name ``workflowType=machine_learning``, see integrations/mlflow_ui.py).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
EXPERIMENT_TAGS = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING}
"""Tags every experiment dataeff creates gets (and an existing one lacking them receives)."""

BOOTSTRAP_ROLES = "roles.json"
BOOTSTRAP_SCORES = "confidence.csv"
BOOTSTRAP_FIGURE = "confidence_histogram.png"
ESTIMATE_JSON = "estimate.json"
ESTIMATE_NEEDS = "labels_needed.json"
ESTIMATE_FIGURE = "predicted_curve.png"
FINETUNE_JSON = "finetune.json"
FINETUNE_ADAPTER = "adapter"
DECISION_TEXT = "decision.txt"
DECISION_JSON = "decision.json"
CALIBRATION_JSON = "calibration.json"
CURSOR_ARTIFACT = "state/cursor.json"
COMPARISON_FIGURE = "comparison/curve.png"
COMPARISON_TABLE_CSV = "comparison/table.csv"
COMPARISON_TABLE_JSON = "comparison/table.json"

_LORA_PARAMS = ("lora_r", "lora_alpha", "lora_dropout", "lora_targets")
PREDICTED_SCORE_METRICS = ("predicted_score", "predicted_score_lo", "predicted_score_hi")
MEASURED_SCORE_METRIC = "measured_score"


@dataclass(frozen=True)
class RunSpec:
    """One run ready to be written: its key (``dataeff.run_key``), name, tags, params and metrics.

    ``None`` tags/params and non-numeric or NaN metrics are left out when written. ``start_time``
    and ``end_time`` (epoch ms) date a run written after its work (fine-tune, estimate) so that
    MLflow shows the work's duration; ``None``: when the run is written.
    """

    kind: str
    key: str
    run_name: str
    tags: dict[str, Any]
    params: dict[str, Any]
    metrics: dict[str, Any]
    start_time: int | None = None
    end_time: int | None = None


@dataclass(frozen=True)
class RunKind:
    """One kind of dataeff run.

    Attributes:
        name: the value of the tag ``dataeff.kind``.
        key_fields: the fields hashed, with ``kind``, into ``dataeff.run_key`` (:func:`run_key`).
        run_name: format string of the run name over the key fields and the run's name fields.
        params, metrics, artifacts: the names the run records (fnmatch patterns).
    """

    name: str
    key_fields: tuple[str, ...]
    run_name: str
    params: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()

    def key(self, **fields: Any) -> str:
        """``run_key(kind=name, **fields)``; ``fields`` must be exactly :attr:`key_fields`."""
        if set(fields) != set(self.key_fields):
            raise ValueError(f"{self.name} run key: fields {sorted(fields)}, the schema says {sorted(self.key_fields)}")
        return run_key(kind=self.name, **fields)

    def spec(
        self,
        key: Mapping[str, Any],
        *,
        tags: Mapping[str, Any],
        params: Mapping[str, Any],
        metrics: Mapping[str, Any],
        timing: tuple[int, int] | None = None,
        **name_fields: Any,
    ) -> RunSpec:
        """The run of this kind keyed by ``key`` (see :meth:`key`); ``tags`` get ``dataeff.kind`` added.

        ``timing``: ``(start_time, end_time)`` in epoch ms (:func:`work_span`), or ``None``.

        Raises:
            ValueError: a param or metric name the table does not declare (a programming error).
        """
        self.check_metrics(metrics)
        undeclared = [n for n in params if not matches(n, self.params)]
        if undeclared:
            raise ValueError(f"{self.name} run: param(s) {undeclared} are not in the schema ({self.params})")
        start, end = timing if timing is not None else (None, None)
        return RunSpec(
            kind=self.name,
            key=self.key(**key),
            run_name=self.run_name.format(**key, **name_fields),
            tags={TAG_KIND: self.name, **tags},
            params=dict(params),
            metrics=dict(metrics),
            start_time=start,
            end_time=end,
        )

    def check_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Raise ValueError for a metric name the table does not declare for this kind."""
        undeclared = [n for n in metrics if not matches(n, self.metrics)]
        if undeclared:
            raise ValueError(f"{self.name} run: metric(s) {undeclared} are not in the schema ({self.metrics})")


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` matches one of the fnmatch ``patterns`` (case-sensitive)."""
    return any(fnmatchcase(name, p) for p in patterns)


BOOTSTRAP = RunKind(
    "bootstrap",
    key_fields=("project", "model"),
    run_name="bootstrap",
    params=("n_*",),  # n_<role>, n_pool
    metrics=("*",),  # numeric pool stats
    artifacts=(BOOTSTRAP_ROLES, BOOTSTRAP_SCORES, BOOTSTRAP_FIGURE),
)
ESTIMATE = RunKind(
    "estimate",
    key_fields=("project", "model", "label_hash", "budget"),
    run_name="estimate-{label_hash:.8}",
    params=(
        *_LORA_PARAMS,
        "seed",
        "draws",
        "n_examples",
        "chat_template",
        "projection_dim",
        "dtype",
        "device",
        "batch_size",  # examples per forward/backward pass actually used (chosen for the device)
        "gram_storage",  # where per-example gradient rows went (dataeff.gradients.plan_gram)
        "calibration_family",
        "calibration_coef",
        "calibration_intercept",
        "label_hash",
    ),
    metrics=(
        "coslow",
        "coslow_std",
        "coslow_mean",
        "coslow_draw_*",
        "predicted_auc",
        "auc_lo",
        "auc_hi",
        "labels_needed_*",  # labels_needed_<t>, labels_needed_<t>_lo, labels_needed_<t>_hi (whole labels)
        "seconds",
    ),
    artifacts=(ESTIMATE_JSON, ESTIMATE_NEEDS, ESTIMATE_FIGURE, "tables/*.json"),
)
FINETUNE = RunKind(
    "finetune",
    key_fields=("project", "model", "label_hash", "budget"),
    run_name="finetune-{budget}",
    params=(
        "budget",
        "seed",
        "n_train",
        "n_eval",
        *_LORA_PARAMS,
        "lr",
        "epochs",
        "batch_size",
        "max_steps",
        "chat_template",
        "dtype",
        "device",
        "label_hash",
    ),
    metrics=(
        "score",
        "seconds",
        "seconds_train",
        "seconds_eval",
        "train_loss",
        "steps",
        *PREDICTED_SCORE_METRICS,  # added by the loop once the assessment is made (Tracker.log_predicted)
        "system/*",  # sampled during the fine-tune (integrations.mlflow_system), step = sample
    ),
    artifacts=(FINETUNE_JSON, f"{FINETUNE_ADAPTER}/*"),
)
DECISION = RunKind(
    "decision",
    key_fields=("project", "iteration"),
    run_name="decision-{action}",
    params=("action", "n_labels", "budget", "iteration"),
    metrics=("n_labels", "labels_needed_*"),
    artifacts=(DECISION_TEXT, DECISION_JSON),
)
CALIBRATION = RunKind(
    "calibration",
    key_fields=("family", "content"),
    run_name="calibration-{family}",
    params=("family", "coef", "intercept", "n_tasks", "tasks"),
    metrics=("*",),  # every numeric field of the calibration
    artifacts=(CALIBRATION_JSON,),
)
SUMMARY = RunKind(
    "summary",
    key_fields=("project",),
    run_name="summary",
    metrics=(MEASURED_SCORE_METRIC, *PREDICTED_SCORE_METRICS),  # step metrics, step = labels
    artifacts=(CURSOR_ARTIFACT, COMPARISON_FIGURE, COMPARISON_TABLE_CSV, COMPARISON_TABLE_JSON),
)

ITERATION = RunKind(
    "iteration",
    key_fields=("project", "iteration"),
    run_name="iteration-{labeled}-labels",
    params=("iteration", "labeled"),
    metrics=("labeled", "train", "eval", "lowconf", "new_runs", "requested", "n_labels"),
)
"""The parent of one loop iteration's estimate, fine-tune and decision runs (``mlflow.parentRunId``);
written only when the iteration writes a child, so a re-run that changes nothing writes nothing."""

RUN_KINDS: tuple[RunKind, ...] = (BOOTSTRAP, ESTIMATE, FINETUNE, DECISION, CALIBRATION, SUMMARY, ITERATION)
"""Every kind of run in a project's (or the calibrations') experiment."""
KINDS = tuple(kind.name for kind in RUN_KINDS)
KIND_BY_NAME = {kind.name: kind for kind in RUN_KINDS}


def _key_tags(project: str, model: str | None, label_hash: str | None = None, budget: int | None = None) -> dict:
    return {TAG_PROJECT: project, TAG_MODEL: model, TAG_LABEL_HASH: label_hash, TAG_BUDGET: budget}


def _lora_params(lora: LoraSettings | None) -> dict[str, Any]:
    if lora is None:
        return dict.fromkeys(_LORA_PARAMS)
    return {
        "lora_r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "lora_targets": ",".join(lora.target_modules),
    }


def work_span(seconds: float | None, ended_ms: int | None = None) -> tuple[int, int] | None:
    """``(start_time, end_time)`` in epoch ms of work that took ``seconds`` and ended at ``ended_ms``
    (default: now); ``None`` when ``seconds`` is not a non-negative number."""
    x = finite(seconds)
    if x is None or x < 0 or math.isinf(x):
        return None
    end = int(time.time() * 1000) if ended_ms is None else int(ended_ms)
    return end - int(round(x * 1000)), end


def whole_labels(n: float) -> int | float:
    """A label count rounded up to whole labels (an int; ``inf`` = never stays ``inf``), as in
    :meth:`~dataeff.efficiency.LabelsNeeded.as_dict`."""
    return math.ceil(n) if math.isfinite(n) else float(n)


def needs_metrics(needs: Mapping[float, LabelsNeeded]) -> dict[str, int | float]:
    """``labels_needed_<t>``, ``labels_needed_<t>_lo``, ``labels_needed_<t>_hi`` per target, whole labels.

    The same numbers on the estimate and the decision run of an iteration (both from the
    assessment the decision was made on), and in ``decision.json``'s summary.
    """
    metrics: dict[str, int | float] = {}
    for t, need in needs.items():
        name = f"labels_needed_{target_key(t)}"
        metrics.update(
            {name: whole_labels(need.median), f"{name}_lo": whole_labels(need.lo), f"{name}_hi": whole_labels(need.hi)}
        )
    return metrics


def predicted_score_metrics(median: float, lo: float, hi: float) -> dict[str, float]:
    """``predicted_score``, ``predicted_score_lo``, ``predicted_score_hi`` of one budget."""
    metrics = dict(zip(PREDICTED_SCORE_METRICS, (float(median), float(lo), float(hi))))
    FINETUNE.check_metrics(metrics)
    return metrics


def comparison_series(
    measured: Mapping[int, float], predicted: Mapping[int, Sequence[float]]
) -> dict[str, dict[int, float]]:
    """Step metrics of the summary run, step = labels: ``measured_score`` per measured budget and
    ``predicted_score`` (``_lo``, ``_hi``) per budget predicted before it was measured."""
    series: dict[str, dict[int, float]] = {MEASURED_SCORE_METRIC: {int(b): float(s) for b, s in measured.items()}}
    for i, name in enumerate(PREDICTED_SCORE_METRICS):
        series[name] = {int(b): float(band[i]) for b, band in predicted.items()}
    SUMMARY.check_metrics(series)
    return series


# ----------------------------------------------------------------------------- iteration


def iteration_run(project: str, model: str | None, iteration_key: str, labeled: int) -> RunSpec:
    """The parent run of one loop iteration, keyed by ``iteration_key`` (its labels and settings)."""
    return ITERATION.spec(
        {"project": project, "iteration": iteration_key},
        tags={TAG_PROJECT: project, TAG_MODEL: model, TAG_ITERATION: iteration_key},
        params={"iteration": iteration_key, "labeled": int(labeled)},
        metrics={},
        labeled=int(labeled),
    )


ITERATION_METRICS = ITERATION.metrics
"""The counts an iteration's summary gives its parent run when it ends."""


def iteration_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The parent run's metrics from a loop iteration's summary (the counts it has; others left out)."""
    metrics = {k: summary[k] for k in ITERATION_METRICS if isinstance(summary.get(k), (int, float))}
    decision = summary.get("decision")
    n_labels = decision.get("n_labels") if isinstance(decision, Mapping) else None
    if isinstance(n_labels, (int, float)):
        metrics["n_labels"] = n_labels
    ITERATION.check_metrics(metrics)
    return {k: float(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- bootstrap


def bootstrap_run(
    project: str, model: str, roles: Mapping[str, Sequence[str]], stats: Mapping[str, Any]
) -> tuple[RunSpec, dict[str, list[str]]]:
    """The bootstrap run and its ``roles.json`` (``{role: [item id, ...]}``, ids as strings).

    Params ``n_<role>`` and ``n_pool`` (``stats["pool"]``); the numeric ``stats`` are metrics.

    Raises:
        DataError: ``roles`` empty or not a dict.
    """
    if not isinstance(roles, Mapping) or not roles:
        raise DataError(f"project {project!r}: roles must be a non-empty dict {{role: [item ids]}}")
    roles_json = {str(role): [str(i) for i in ids] for role, ids in roles.items()}
    params: dict[str, Any] = {f"n_{role}": len(ids) for role, ids in roles_json.items()}
    params["n_pool"] = stats.get("pool")
    metrics = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    note = "; ".join(f"{role}: {len(ids)} items" for role, ids in roles_json.items())
    spec = BOOTSTRAP.spec(
        {"project": project, "model": model},
        tags={**_key_tags(project, model), TAG_NOTE: note},
        params=params,
        metrics=metrics,
    )
    return spec, roles_json


# ----------------------------------------------------------------------------- estimate


def target_needs(
    prediction: Prediction, targets: Sequence[float], needs: Mapping[float, LabelsNeeded] | None = None
) -> dict[float, LabelsNeeded]:
    """Labels needed per target: from ``needs`` (the assessment's) where given, else the prediction's."""
    return {t: needs[t] if needs and t in needs else prediction.need(t) for t in targets}


def needs_rows(
    prediction: Prediction, targets: Sequence[float], needs: Mapping[float, LabelsNeeded] | None = None
) -> list[dict[str, Any]]:
    """``labels_needed.json`` rows ``{"target", "labels_needed", "lo", "hi"}`` (whole labels; ``inf`` = never).

    From ``needs`` (the assessment the decision was made on) where given, else the prediction.
    """
    return [
        {
            "target": target_key(t),
            "labels_needed": whole_labels(need.median),
            "lo": whole_labels(need.lo),
            "hi": whole_labels(need.hi),
        }
        for t, need in target_needs(prediction, targets, needs).items()
    ]


def prediction_record(prediction: Prediction, targets: Sequence[float]) -> dict[str, Any]:
    """The prediction as stored in ``estimate.json``: AUC and interval, calibration, labels needed per target.

    ``{"auc", "auc_lo", "auc_hi", "calibration": {"family", "coef", "intercept"},
    "targets": {target: {"n", "lo", "hi"}}}``.
    """
    lo, hi = prediction.auc_interval if prediction.auc_interval else (None, None)
    return {
        "auc": prediction.auc,
        "auc_lo": lo,
        "auc_hi": hi,
        "calibration": {
            "family": prediction.extra.get("calibration"),
            "coef": prediction.coef,
            "intercept": prediction.intercept,
        },
        "targets": {t: {"n": n.median, "lo": n.lo, "hi": n.hi} for t, n in ((t, prediction.need(t)) for t in targets)},
    }


def estimate_run(
    project: str,
    model: str,
    label_hash: str,
    coslow: CosLowResult,
    prediction: Prediction,
    targets: Sequence[float],
    *,
    needs: Mapping[float, LabelsNeeded] | None = None,
    needs_from: str | None = None,
    ended_ms: int | None = None,
) -> RunSpec:
    """The estimate run of one CoS-Low result and the prediction made from it.

    Metrics ``coslow``, ``coslow_std``, ``coslow_mean``, ``coslow_draw_<i>``, ``predicted_auc``,
    ``auc_lo``/``auc_hi`` and ``labels_needed_<t>`` (``_lo``, ``_hi``; whole labels) for each of
    ``targets``: from ``needs`` (the assessment the iteration decided on; ``needs_from`` names its
    source, tag ``dataeff.labels_needed_from``) where given, else from the prediction. The run spans
    ``coslow.seconds`` ending at ``ended_ms`` (default: now).
    """
    params = {
        **_lora_params(LoraSettings.from_dict(coslow.lora) if coslow.lora else None),
        "seed": coslow.seed,
        "draws": len(coslow.draws),
        "n_examples": coslow.n_examples,
        "chat_template": coslow.chat_template,
        "projection_dim": coslow.projection_dim,
        "dtype": coslow.dtype,
        "device": coslow.device,
        "batch_size": coslow.batch_size,
        "gram_storage": coslow.gram.get("storage"),
        "calibration_family": prediction.extra.get("calibration"),
        "calibration_coef": prediction.coef,
        "calibration_intercept": prediction.intercept,
        "label_hash": label_hash,
    }
    lo, hi = prediction.auc_interval if prediction.auc_interval else (None, None)
    metrics: dict[str, Any] = {
        "coslow": coslow.coslow,
        "coslow_std": coslow.std,
        "coslow_mean": coslow.mean,
        "predicted_auc": prediction.auc,
        "auc_lo": lo,
        "auc_hi": hi,
        "seconds": coslow.seconds,
    }
    metrics.update({f"coslow_draw_{i}": value for i, value in enumerate(coslow.draws)})
    metrics.update(needs_metrics(target_needs(prediction, targets, needs)))
    rows = needs_rows(prediction, targets, needs)
    tags = {
        **_key_tags(project, model, label_hash),
        TAG_NEEDS_FROM: needs_from if needs else "prediction",
        TAG_NOTE: _estimate_note(coslow, prediction, rows),
    }
    return ESTIMATE.spec(
        {"project": project, "model": model, "label_hash": label_hash, "budget": None},
        tags=tags,
        params=params,
        metrics=metrics,
        timing=work_span(coslow.seconds, ended_ms),
    )


def _estimate_note(coslow: CosLowResult, prediction: Prediction, rows: Sequence[Mapping[str, Any]]) -> str:
    parts = [f"CoS-Low {coslow.coslow:.3f}", f"predicted AUC {prediction.auc:.3f}"]
    for row in rows:
        interval = f" ({row['lo']:.0f}-{row['hi']:.0f})"
        parts.append(f"target {row['target']}: {float(row['labels_needed']):.0f} labels{interval}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- fine-tune


def finetune_run(
    project: str, model: str, label_hash: str, result: FinetuneResult, *, ended_ms: int | None = None
) -> RunSpec:
    """The fine-tune run of one curve point (``result.budget`` labels; 0 = zero-shot).

    The run spans ``seconds_train + seconds_eval`` ending at ``ended_ms`` (default: now).

    Raises:
        DataError: a budget that is not a non-negative int, or a NaN score.
    """
    budget = result.budget
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
        raise DataError(f"project {project!r}: budget must be a non-negative int, got {budget!r}")
    if finite(result.score) is None:
        raise DataError(f"project {project!r}, budget {budget}: result has no numeric 'score'")
    settings = FinetuneSettings.from_dict(result.settings)
    params = {
        "budget": budget,
        "seed": settings.seed,
        "n_train": result.n_train,
        "n_eval": result.n_eval,
        **_lora_params(settings.lora),
        "lr": settings.lr,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "max_steps": settings.max_steps,
        "chat_template": settings.chat_template,
        "dtype": result.dtype,
        "device": result.device,
        "label_hash": label_hash,
    }
    metrics = {
        "score": result.score,
        "seconds": result.seconds_train + result.seconds_eval,
        "seconds_train": result.seconds_train,
        "seconds_eval": result.seconds_eval,
        "train_loss": result.final_loss,
        "steps": result.steps,
    }
    return FINETUNE.spec(
        {"project": project, "model": model, "label_hash": label_hash, "budget": budget},
        tags={
            **_key_tags(project, model, label_hash, budget),
            TAG_NOTE: f"LoRA fine-tune on {budget} labels: score {result.score:.4f}",
        },
        params=params,
        metrics=metrics,
        timing=work_span(result.seconds_train + result.seconds_eval, ended_ms),
    )


# ----------------------------------------------------------------------------- decision


def decision_run(
    project: str,
    model: str | None,
    iteration_key: str,
    decision: Decision,
    *,
    needs: Mapping[float, LabelsNeeded] | None = None,
    needs_from: str | None = None,
) -> RunSpec:
    """The decision run of one loop iteration, keyed by ``iteration_key`` (the iteration's inputs).

    Metrics ``n_labels`` and, given the assessment's ``needs``, ``labels_needed_<t>`` (``_lo``,
    ``_hi``; whole labels, the numbers of the iteration's estimate run); tag
    ``dataeff.labels_needed_from`` = ``needs_from``.

    Raises:
        DataError: a decision without an action.
    """
    if not decision.action:
        raise DataError(f"project {project!r}, iteration {iteration_key!r}: decision has no 'action'")
    reason = decision.reason or ""
    tags = {
        **_key_tags(project, model, budget=decision.budget),
        TAG_ITERATION: iteration_key,
        TAG_ACTION: decision.action,
        TAG_REASON: reason,
        TAG_NOTE: decision.status_text or reason,
        TAG_NEEDS_FROM: needs_from if needs else None,
    }
    params = {
        "action": decision.action,
        "n_labels": decision.n_labels,
        "budget": decision.budget,
        "iteration": iteration_key,
    }
    return DECISION.spec(
        {"project": project, "iteration": str(iteration_key)},
        tags=tags,
        params=params,
        metrics={"n_labels": decision.n_labels, **needs_metrics(needs or {})},
        action=decision.action,
    )


def decision_text(decision: Decision) -> str:
    """``decision.txt``: the action, the reason and the status text, one line each."""
    return f"action: {decision.action}\nreason: {decision.reason or ''}\nstatus: {decision.status_text or ''}\n"


def decision_record(decision: Decision, summary: Mapping[str, Any] | None) -> dict[str, Any]:
    """``decision.json``: the decision's fields, plus the iteration's ``summary`` when given."""
    record = decision.as_dict()
    return record if summary is None else {**record, "summary": summary}


# ----------------------------------------------------------------------------- calibration


def calibration_run(family: str, calibration: Mapping[str, Any]) -> tuple[RunSpec, dict[str, Any]]:
    """The calibration run of a model family and its ``calibration.json`` (keyed by family + content).

    Args:
        calibration: :meth:`dataeff.calibration.Calibration.as_dict` (``coef``, ``intercept``
            required; ``loo_mae``, ``n_tasks``, ``tasks``, ... optional).

    Raises:
        DataError: ``coef`` or ``intercept`` missing or not a number.
    """
    cal = json_ready(dict(calibration))
    if finite(cal.get("coef")) is None or finite(cal.get("intercept")) is None:
        raise DataError(f"calibration of {family!r}: needs numeric 'coef' and 'intercept'")
    params = {
        "family": family,
        "coef": cal["coef"],
        "intercept": cal["intercept"],
        "n_tasks": cal.get("n_tasks"),
        "tasks": cal.get("tasks"),
    }
    metrics = {k: v for k, v in cal.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    spec = CALIBRATION.spec(
        {"family": family, "content": run_key(**redact(cal))},
        tags={TAG_FAMILY: family},
        params=params,
        metrics=metrics,
    )
    return spec, {"family": family, **cal}


# ----------------------------------------------------------------------------- summary


def summary_tags(project: str) -> dict[str, str]:
    """Tags of a project's summary run (it is created once, never keyed for idempotency by ``log_run``)."""
    return {
        TAG_KIND: SUMMARY.name,
        TAG_PROJECT: project,
        TAG_RUN_KEY: SUMMARY.key(project=project),
        TAG_NOTE: "dataeff state of this project: state/cursor.json and comparison/ (overwritten in place)",
    }
