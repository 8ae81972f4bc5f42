"""Pre-annotations from the project's best model: which model predicts, its answers, and the loop's re-scoring.

- :func:`current_predictor`: the latest fine-tuned adapter the loop saved (largest budget, see
  :mod:`dataeff.adapters`) or, before there is one, the base model; with its measured accuracy on
  the eval split (the fine-tune's score; the zero-shot score for the base model).
- :func:`predict_examples`: the predictor's greedy answers and confidences for some items (adapter
  attached for the call, base model left bit-identical), filtered by the rules of
  :mod:`dataeff.prelabel` (exact labels only, no degenerate guesser, no model whose measured
  accuracy is below ``min_accuracy``). The Label Studio ML backend answers ``/predict`` with it.
- :func:`refresh_prelabels`: the loop's step after its fine-tunes.

  1. Withdraw pre-annotations known to be poor: those of a model version whose model is measured
     below ``min_accuracy`` (in practice the base model's answers the bootstrap pushed before its
     zero-shot score was known) are deleted from every item not labeled yet. Switching the
     project's model version is not enough: Label Studio's task view (a click on a row of the
     data manager) pre-selects a task's first prediction, whatever its version, while the task
     has no annotation. Annotations are never touched, and predictions on labeled items are kept.
  2. When the best model changed, re-score the unlabeled items at the top of the annotation queue
     (priority, then task id; eval and too-long items aside; at most
     ``ProjectConfig.rescore_max_items``, batched) with it and pre-annotate them under its own
     model version, which becomes the project's: the labeling streams now pre-select its answers
     and no longer the old ones. Nothing is scored for a model measured below ``min_accuracy``;
     when the rules withhold the answers (a degenerate guesser, no exact label), nothing is
     pushed and the shown pre-annotations stay (they passed the rules themselves). See
     :func:`dataeff.prelabel.plan_switch`.

Idempotent: the judgement of each model version on the queue is recorded
(``<home>/projects/<name>/prelabels.json``, the bootstrap records the base model's), and a
withdrawn version has nothing left to delete, so an iteration with the same best model scores and
writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task

from dataeff.adapters import (
    adapter_model_version,
    adapters_root,
    attached_adapter,
    base_model_version,
    budget_of_version,
    latest_adapter,
    model_lock,
    read_info,
)
from dataeff.confidence import score_confidence
from dataeff.data import Example
from dataeff.errors import DataError
from dataeff.iteration import ROLE_EVAL, ROLE_TOO_LONG
from dataeff.prelabel import (
    KEEP,
    RESCORE,
    PrelabelPlan,
    accuracy_withheld,
    plan_prelabels,
    plan_switch,
    poor_versions,
    settings_from,
)
from dataeff.project import ProjectConfig, dataeff_home
from dataeff.queue import queue_order
from flows.services import RETRY, Services, get_model
from integrations.label_studio import PRIORITY_FIELD
from integrations.ls_reconcile import ID_FIELD, PROMPT_FIELD

log = logging.getLogger(__name__)

_RECORD = "prelabels.json"


@dataclass(frozen=True)
class Predictor:
    """The model that pre-annotates, as Label Studio and the rules see it.

    Attributes:
        model_version: Label Studio model version of its predictions: ``dataeff-<model>`` for the
            base model, ``dataeff-<model>-lora-b<budget>-<hash8>`` for an adapter (one per adapter).
        adapter_dir: the saved LoRA adapter (peft folder); ``None``: the base model.
        accuracy: measured agreement with the annotators on the eval split, in [0, 1] (the
            fine-tune's score at its budget; the zero-shot score for the base model); ``None`` when
            not measured yet.
        budget: labels the adapter was trained on (``None``: the base model).
    """

    model_version: str
    adapter_dir: str | None
    accuracy: float | None
    budget: int | None = None


def _logger():
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow run
        return log


def _predictor(cfg: ProjectConfig, measured: Mapping[int, float] | None) -> Predictor:
    found = latest_adapter(adapters_root(cfg.name), cfg.model)
    if found is not None:
        folder, info = found
        return Predictor(adapter_model_version(info), str(folder), float(info.score), int(info.budget))
    zero = (measured or {}).get(0)
    return Predictor(base_model_version(cfg.model), None, None if zero is None else float(zero))


def current_predictor(svc: Services) -> Predictor:
    """The latest adapter (largest measured budget whose adapter folder exists) or the base model.

    The adapter's accuracy is the score saved with it; the base model's is the zero-shot score
    logged in MLflow (read only when there is no adapter; ``None`` before the zero-shot is measured).

    Raises:
        TrackingError: MLflow is unreachable while the base model's accuracy is read.
    """
    cfg = svc.config
    if latest_adapter(adapters_root(cfg.name), cfg.model) is not None:
        return _predictor(cfg, None)
    return _predictor(cfg, svc.runs.finetuned_budgets())


def _scoring(cfg: ProjectConfig, predictor: Predictor) -> tuple[bool, int, tuple[str, ...] | None]:
    """``(chat_template, max_new_tokens, stop_strings)``: how the predictor's accuracy was measured
    (an adapter: as its fine-tune scored it; the base model: as the bootstrap scores the pool)."""
    if predictor.adapter_dir is None:
        return cfg.chat_template, cfg.max_new_tokens, None if cfg.chat_template else ("\n",)
    info = read_info(predictor.adapter_dir)
    if info is None:
        raise DataError(
            f"project {cfg.name}: adapter {predictor.adapter_dir} is gone (a newer one replaced it); "
            "take current_predictor() again"
        )
    return info.chat_template, info.max_new_tokens, ("\n",) if info.stop_at_newline else None


def predict_examples(
    svc: Services,
    examples: Sequence[Example],
    predictor: Predictor | None = None,
    batch_size: int | None = None,
) -> tuple[Predictor, PrelabelPlan]:
    """Score ``examples`` with the predictor and keep the answers the pre-annotation rules allow.

    The predictor's adapter (if any) is attached to the shared base model for the call only
    (:func:`dataeff.adapters.attached_adapter`); answers are greedy, with the prompt format and
    length the predictor's accuracy was measured with. Then :func:`dataeff.prelabel.plan_prelabels`
    with ``accuracy=predictor.accuracy``: exact labels only, no degenerate guesser, nothing from a
    model measured below ``min_accuracy`` (that model is not even run).

    Args:
        svc: the project's services (config; MLflow only to find the base model's accuracy).
        examples: items to answer (``id`` and ``prompt``; an empty prompt gets no answer).
        predictor: default :func:`current_predictor`.
        batch_size: prompts per generation batch (default ``None``: chosen for the device, as the
            bootstrap: 16 on CPU, from free memory on CUDA).

    Returns:
        ``(predictor, plan)``; ``plan.answers`` maps item id to ``(label, confidence)`` and is empty
        when the rules withhold the answers (``plan.reason`` says why).
    """
    cfg = svc.config
    predictor = predictor or current_predictor(svc)
    settings = settings_from(cfg.prelabel)
    labels = cfg.task.labels or None
    items = [e for e in examples if e.prompt and e.prompt.strip()]
    scored: list[tuple[str, str | None, float]] = [
        (str(e.id), None, 0.0) for e in examples if not (e.prompt and e.prompt.strip())
    ]
    if accuracy_withheld(predictor.accuracy, settings) is not None or not items:  # not run: the plan says why
        scored += [(str(e.id), None, 0.0) for e in items]
        return predictor, plan_prelabels(scored, labels, settings, accuracy=predictor.accuracy)
    chat_template, max_new_tokens, stops = _scoring(cfg, predictor)
    loaded = get_model(cfg.model)

    def answers(model) -> list[tuple[str, str | None, float]]:
        scores = score_confidence(
            model,
            loaded.tokenizer,
            items,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            chat_template=chat_template,
            stop_strings=stops,
        )
        return [(s.id, s.answer, s.confidence) for s in scores]

    if predictor.adapter_dir is None:
        with model_lock(loaded):
            scored += answers(loaded.model)
    else:
        with attached_adapter(loaded, predictor.adapter_dir) as model:
            scored += answers(model)
    return predictor, plan_prelabels(scored, labels, settings, accuracy=predictor.accuracy)


# --------------------------------------------------------------------------------------------
# The loop's step: re-score the queue when the best model changed
# --------------------------------------------------------------------------------------------
def record_path(project: str, home: Path | None = None) -> Path:
    """The record of the latest judgement of a model version on the queue: ``<home>/projects/<project>/prelabels.json``."""
    return (home or dataeff_home()) / "projects" / project / _RECORD


def read_record(project: str) -> dict:
    try:
        data = json.loads(record_path(project).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(project: str, record: Mapping) -> None:
    path = record_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(record), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def queue_items(records: Sequence, exclude: Collection[str], cap: int) -> list[Example]:
    """The first ``cap`` items of the annotation queue (priority, then task id) that dataeff
    imported, that are not in ``exclude`` and have a prompt: ``Example(prompt, id)``."""
    by_id = {str(r.data[ID_FIELD]): r for r in records if r.data.get(ID_FIELD) is not None}
    order = queue_order({i: (r.data.get(PRIORITY_FIELD) or 0, r.task_id) for i, r in by_id.items() if i not in exclude})
    out: list[Example] = []
    for i in order:
        if len(out) >= cap:
            break
        prompt = str(by_id[i].data.get(PROMPT_FIELD) or "")
        if prompt.strip():
            out.append(Example(prompt=prompt, id=i))
    return out


@task(name="read-queue", persist_result=False, **RETRY)
def read_queue(svc: Services, exclude: Collection[str], cap: int) -> list[Example]:
    return queue_items(svc.ls.tasks(svc.project_id), exclude, cap)


@task(name="shown-version", persist_result=False, **RETRY)
def shown_version(svc: Services) -> str:
    return str(svc.ls.project_info(svc.project_id)["model_version"] or "")


@task(name="push-prelabels", persist_result=False, **RETRY)
def push_prelabels(svc: Services, answers: Mapping[str, tuple[str, float]], model_version: str) -> int:
    """Push the answers under ``model_version`` (which becomes the project's); returns how many are new."""
    return svc.ls.push_predictions(svc.project_id, dict(answers), model_version=model_version)


@task(name="prediction-counts", persist_result=False, **RETRY)
def prediction_counts(svc: Services, labeled: Collection[str]) -> dict[str, int]:
    return svc.ls.prediction_counts(svc.project_id, exclude=labeled)


@task(name="withdraw-prelabels", persist_result=False, **RETRY)
def withdraw(svc: Services, model_version: str, labeled: Collection[str]) -> int:
    """Delete the predictions of ``model_version`` on the items not labeled yet; returns how many."""
    return svc.ls.delete_predictions(svc.project_id, model_version, exclude=labeled)


def refresh_prelabels(svc: Services, roles: Mapping[str, Sequence[str]], labeled_ids: Collection[str]) -> dict:
    """The loop's pre-annotation step (see the module): withdraw known-poor ones, re-score the queue
    when the best model changed.

    Args:
        svc: the project's services.
        roles: the bootstrap's roles (eval and too-long items are never re-scored).
        labeled_ids: items labeled now (never re-scored; their predictions are kept).

    Returns:
        The iteration summary's ``prelabels`` entry: ``model_version`` (the current predictor's),
        ``action`` (``keep`` or ``rescore``), ``pushed`` (predictions written), ``scored`` (items
        run through the model), ``shown`` (the project's model version after the step),
        ``withdrawn`` (``{model version: predictions deleted}``, empty when none), ``reason`` and,
        when the rules withhold the predictor's answers, ``withheld_reason``. A failure is logged
        and returned as ``error`` (pre-annotations never stop the loop).
    """
    cfg = svc.config
    logger = _logger()
    try:
        out = _refresh(svc, roles, labeled_ids)
    except Exception as exc:  # noqa: BLE001 - a convenience for annotators must not fail the iteration
        logger.warning("%s: pre-annotations not refreshed: %s", cfg.name, exc)
        return {"model_version": None, "action": "error", "pushed": 0, "error": str(exc)[:500]}
    gone = "".join(f"; withdrew {n:,} of {v}" for v, n in out["withdrawn"].items())
    logger.info(
        "%s: pre-annotations of %s: %s, %d pushed%s; %s",
        cfg.name,
        out["model_version"],
        out["action"],
        out["pushed"],
        gone,
        out["reason"],
    )
    return out


def _refresh(svc: Services, roles: Mapping[str, Sequence[str]], labeled_ids: Collection[str]) -> dict:
    cfg = svc.config
    settings = settings_from(cfg.prelabel)
    measured = svc.runs.finetuned_budgets()
    predictor = _predictor(cfg, measured)
    version = predictor.model_version
    labeled = set(map(str, labeled_ids))

    def accuracy(v: str) -> float | None:
        if v == version:
            return predictor.accuracy
        budget = budget_of_version(v, cfg.model)
        return None if budget is None else measured.get(budget)

    counts = prediction_counts(svc, labeled)
    poor = poor_versions({v: accuracy(v) for v in counts if v.startswith("dataeff-")}, settings)
    withdrawn = {v: withdraw(svc, v, labeled) for v in sorted(poor)}

    shown = shown_version(svc)
    record = read_record(cfg.name)
    decided = None
    if record.get("model_version") == version:
        decided = str(record.get("reason"))
        if record.get("pushed"):
            decided = f"the pre-annotations of {version} were pushed before ({decided}); not scored again"
    plan = plan_switch(
        version,
        predictor.accuracy,
        shown,
        settings,
        decided=decided,
        decided_withheld=not record.get("pushed"),
        ours=not shown or shown.startswith("dataeff-"),
    )
    out: dict = {"model_version": version, "action": plan.action, "pushed": 0, "scored": 0, "reason": plan.reason}
    withheld = plan.reason if plan.withheld else None
    if plan.action == RESCORE and cfg.rescore_max_items == 0:
        out.update(action=KEEP, reason="re-scoring is off (rescore_max_items = 0)")
    elif plan.action == RESCORE:
        exclude = labeled | set(roles.get(ROLE_EVAL, [])) | set(roles.get(ROLE_TOO_LONG, []))
        examples = read_queue(svc, exclude, cfg.rescore_max_items)
        _, prelabels = predict_examples(svc, examples, predictor)
        out["scored"] = len(examples)
        if prelabels.push:
            out["pushed"] = push_prelabels(svc, prelabels.answers, version)
            out["reason"] = f"{prelabels.reason} (of the first {len(examples):,} unlabeled items of the queue)"
            shown = version
        else:
            withheld = out["reason"] = prelabels.reason
        write_record(
            cfg.name,
            {
                "model_version": version,
                "pushed": out["pushed"],
                "scored": out["scored"],
                "reason": prelabels.reason,
                "at": time.time(),
            },
        )
    out.update(shown=shown, withdrawn=withdrawn)
    if withdrawn:
        out["reason"] += "; " + "; ".join(f"{v} withdrawn: {why}" for v, why in sorted(poor.items()))
    if withheld is not None:
        out["withheld_reason"] = withheld
    return out


__all__ = [
    "Predictor",
    "current_predictor",
    "predict_examples",
    "refresh_prelabels",
]
