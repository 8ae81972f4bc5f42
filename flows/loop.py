"""One iteration of the annotation loop — the scheduled unit.

pull labels -> (CoS-Low when the low-confidence batch is complete or its labels changed) ->
fine-tune every grid budget the labels now cover -> assess (prediction + curve posterior) ->
log to MLflow -> decide -> request the next batch in Label Studio and update the status text.

Idempotent: every MLflow run is keyed by its inputs, so re-running an iteration with the same
labels finds the existing runs and writes nothing new. At most one iteration of a project runs
at a time (:func:`flows.locks.project_slot`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, replace

from prefect import flow, get_run_logger, task

from dataeff import adapters
from dataeff.assess import Assessment
from dataeff.calibration import Calibration, dtype_warning, get_calibration
from dataeff.coslow import CosLowResult, compute_coslow
from dataeff.finetune import FinetuneResult, FinetuneSettings, nested_subset, run_finetune
from dataeff.iteration import (
    ROLE_EVAL,
    ROLE_LOWCONF,
    ROLE_TOO_LONG,
    LabeledSets,
    budgets_due,
    label_set_hash,
    partition,
)
from dataeff.models import LoraSettings
from dataeff.plots import plot_curve
from dataeff.policy import Decision
from dataeff.project import ProjectConfig
from dataeff.queue import priorities
from dataeff.step import StepInputs, StepSettings, plan_request, settings_for, step
from flows import pending
from flows.locks import project_slot
from flows.predictions import refresh_prelabels
from flows.services import LOG_RETRY, RETRY, Services, get_model, open_services
from integrations.label_studio import Cursor, PullResult
from integrations.mlflow_runs import DatasetRef
from integrations.mlflow_schema import iteration_metrics
from integrations.mlflow_system import Sample, SystemSampler, samples_from
from integrations.mlflow_tracking import LoggedRun

log = logging.getLogger(__name__)


def _logger():
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow run
        return log


@task(name="pull-labels", persist_result=False, **RETRY)
def pull_labels(svc: Services, cursor: Cursor | None) -> PullResult:
    """Every labeled item now, reconciled with ``cursor`` (edits replace, deletions drop out).

    A failed pull raises and the stored cursor stays as it was: nothing is lost or counted twice.
    """
    return svc.ls.pull_labeled(svc.project_id, since=cursor)


def pull_warnings(pulled: PullResult) -> list[str]:
    """One line per thing the pull skipped: malformed items, then hand-made tasks (never counted)."""
    lines = [f"skipped item {e.dataeff_id} (task {e.task_id}): {e.reason}" for e in pulled.errors]
    if pulled.unmanaged_task_ids:
        ids = ", ".join(map(str, pulled.unmanaged_task_ids[:20])) + (
            " ..." if len(pulled.unmanaged_task_ids) > 20 else ""
        )
        lines.append(
            f"skipped {len(pulled.unmanaged_task_ids)} annotated task(s) made by hand in Label Studio "
            f"(no dataeff_id; task ids {ids}): not counted, since dataeff cannot tell pool, eval or duplicate "
            f"apart. To count them, add the items to the pool file and re-run `dataeff project create`, then "
            f"delete the hand-made tasks."
        )
    return lines


@task(name="estimate", persist_result=False)
def estimate(svc: Services, sets: LabeledSets) -> CosLowResult:
    """CoS-Low of the labeled low-confidence batch: reused from MLflow when its labels are unchanged."""
    cfg = svc.config
    stored = svc.runs.stored_coslow(label_set_hash(sets.lowconf))
    if stored is not None:
        return stored
    loaded = get_model(cfg.model)
    with adapters.model_lock(loaded):  # CoS-Low attaches its own adapters to the shared model
        res = compute_coslow(
            loaded,
            sets.lowconf,
            lora=LoraSettings(),
            seed=cfg.seed,
            draws=cfg.coslow_draws,
            chat_template=cfg.chat_template,
            max_prompt_tokens=cfg.max_prompt_tokens,
            max_answer_tokens=cfg.max_answer_tokens,
        )
    for item in res.skipped:
        _logger().warning("%s: CoS-Low left out %s: %s", cfg.name, item["id"], item["reason"])
    return res


@task(name="finetune", persist_result=False)
def finetune_budget(svc: Services, sets: LabeledSets, budget: int) -> tuple[FinetuneResult, list[Sample]]:
    """LoRA fine-tune on the first ``budget`` training labels (budget 0: zero-shot), scored on the eval split.

    The adapter is saved under ``<home>/projects/<name>/adapters/<train_hash>-b<budget>/``
    (:mod:`dataeff.adapters`; older ones of smaller budgets are deleted) and named in
    ``result.adapter_dir``. The result is kept on disk before anything is logged; a kept result for
    the same labels and budget (MLflow was down last time) is returned without training again.
    Returns the result and the system metrics sampled while it ran (kept with it).
    """
    cfg = svc.config
    path = pending.pending_path(cfg.name, "finetune", _train_hash(cfg, sets, budget), budget)
    kept = pending.kept(path)
    if kept is not None:
        _logger().info(
            "%s: budget %d was measured before but not logged (MLflow was unreachable); logging the kept "
            "result instead of training again",
            cfg.name,
            budget,
        )
        if "result" not in kept:  # kept by an older version: the result alone
            return FinetuneResult.from_dict(kept), []
        return FinetuneResult.from_dict(kept["result"]), samples_from(kept.get("system"))
    loaded = get_model(cfg.model)
    settings = FinetuneSettings.from_dict({"seed": cfg.seed, "chat_template": cfg.chat_template, **cfg.finetune})
    train_hash = _train_hash(cfg, sets, budget)
    root, name = adapters.adapters_root(cfg.name), adapters.adapter_name(train_hash, budget)
    with adapters.staging(root, name, enabled=budget > 0) as staged:
        with adapters.model_lock(loaded), SystemSampler() as sampler:
            result = run_finetune(loaded, sets.train, sets.eval, cfg.task, budget, settings, adapter_dir=staged)
        if staged is not None:  # kept for pre-annotations (flows/predictions.py); only the largest budget's stays
            result.adapter_dir = adapters.keep_adapter(staged, cfg.model, train_hash, result, cfg.task.metric)
    pending.keep(path, {"result": result.as_dict(), "system": [x.as_dict() for x in sampler.samples]})
    return result, sampler.samples


def _datasets(svc: Services, **parts: tuple[str, Sequence]) -> list[DatasetRef]:
    """MLflow dataset inputs: ``name=(context, examples)`` -> ``<project>-<name>``, digest = label-set hash,
    source = the Label Studio project's page."""
    cfg = svc.config
    source = f"{cfg.label_studio_url.rstrip('/')}/projects/{cfg.label_studio_project_id}"
    return [
        DatasetRef(f"{cfg.name}-{name}", label_set_hash(list(rows)), context, len(rows), source)
        for name, (context, rows) in parts.items()
    ]


@task(name="log-finetune", persist_result=False, **LOG_RETRY)
def log_finetune(svc: Services, sets: LabeledSets, result: FinetuneResult, system: Sequence[Sample] = ()) -> str:
    """Log a measured fine-tune to MLflow (retried through an outage), then forget the kept copy; returns the run id.

    The run gets its dataset inputs (training subset, eval split) and the sampled system metrics.
    """
    cfg = svc.config
    train_hash = _train_hash(cfg, sets, result.budget)
    datasets = _datasets(
        svc, train=("training", nested_subset(sets.train, result.budget, cfg.seed)), eval=("eval", sets.eval)
    )
    run = svc.runs.log_finetune(train_hash, result, datasets=datasets, system=system)
    pending.done(pending.pending_path(svc.config.name, "finetune", train_hash, result.budget))
    return run.run_id


def measure_and_log(svc: Services, sets: LabeledSets, budget: int) -> tuple[float, str]:
    """Fine-tune at ``budget`` (or take the kept result) and log it; returns the score and the run id."""
    result, system = finetune_budget(svc, sets, budget)
    run_id = log_finetune(svc, sets, result, system)
    return float(result.score), run_id


def measure_budget(svc: Services, sets: LabeledSets, budget: int) -> float:
    """Fine-tune at ``budget`` (or take the kept result) and log it; returns the score."""
    return measure_and_log(svc, sets, budget)[0]


def _train_hash(cfg: ProjectConfig, sets: LabeledSets, budget: int) -> str:
    return label_set_hash(nested_subset(sets.train, budget, cfg.seed) + sets.eval)


@task(name="log-estimate", persist_result=False, **LOG_RETRY)
def log_estimate(svc: Services, sets: LabeledSets, coslow: CosLowResult, assessment: Assessment, figure) -> bool:
    """Log the estimate (CoS-Low and the prediction at the project's targets); ``True`` when it is new."""
    lhash = label_set_hash(sets.lowconf)
    run = svc.runs.log_estimate(
        lhash,
        coslow,
        assessment.prediction,
        svc.config.targets,
        figure=figure,
        needs=assessment.needs,
        needs_from=assessment.source,
        datasets=_datasets(svc, lowconf=("low-confidence", sets.lowconf)),
    )
    return run.created


@task(name="log-predicted", persist_result=False, **LOG_RETRY)
def log_predicted(svc: Services, run_ids: dict[int, str], predicted: dict[int, tuple[float, float, float]]) -> None:
    """Add to each fine-tune run the score predicted for its budget (idempotent: a run keeps its first)."""
    for budget, band in sorted(predicted.items()):
        if budget in run_ids:
            svc.runs.log_predicted(run_ids[budget], *band)


@task(name="request-labels", persist_result=False, **RETRY)
def request_next(svc: Services, decision: Decision, roles: dict, labeled_ids: set[str]) -> list[str]:
    """Put the next items at the top of the annotators' queue (order: :func:`dataeff.step.plan_request`)."""
    if decision.action != "request_labels" or decision.n_labels <= 0:
        return []
    records = svc.ls.tasks(svc.project_id)
    too_long = set(roles.get(ROLE_TOO_LONG, []))
    plan = plan_request(
        decision,
        roles.get(ROLE_LOWCONF, []),
        roles.get(ROLE_EVAL, []),
        [r.dataeff_id for r in records if r.dataeff_id not in too_long],
        labeled_ids,
        seed=svc.config.seed,
    )
    svc.ls.push_priorities(svc.project_id, priorities(plan.ids, plan.priority_base))
    return plan.ids


@task(name="update-status", persist_result=False, **RETRY)
def update_status(svc: Services, decision: Decision) -> None:
    """Show the decision to annotators in the Label Studio project (only when it changed)."""
    if svc.ls.get_status(svc.project_id) != decision.status_text:
        svc.ls.set_status(svc.project_id, decision.status_text, done=decision.action == "stop")


@task(name="log-decision", persist_result=False, **LOG_RETRY)
def log_decision(
    svc: Services, iteration_key: str, decision: Decision, summary: dict, assessment: Assessment | None = None
) -> LoggedRun:
    """Log the decision with the labels needed of the assessment it was made on (as on the estimate run)."""
    if assessment is None:
        return svc.runs.log_decision(iteration_key, decision, summary)
    return svc.runs.log_decision(iteration_key, decision, summary, needs=assessment.needs, needs_from=assessment.source)


@task(name="log-comparison", persist_result=False, **LOG_RETRY)
def log_comparison(
    svc: Services,
    figure,
    rows: list[dict],
    measured: dict[int, float] | None = None,
    predicted: dict[int, tuple[float, float, float]] | None = None,
) -> None:
    """The summary run's comparison: figure and table, and step metrics (step = labels) of the
    measured scores and of the scores predicted before each was measured."""
    svc.runs.update_comparison(figure, rows, measured=measured, predicted=predicted)


@task(name="save-cursor", persist_result=False, **LOG_RETRY)
def save_cursor(svc: Services, cursor: dict) -> None:
    svc.runs.log_cursor(cursor)


def _settings_hash(settings: StepSettings, cfg: ProjectConfig) -> str:
    inputs = json.dumps(
        {"settings": asdict(settings), "calibration": cfg.calibration, "human_score": cfg.human_score},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(inputs.encode()).hexdigest()[:10]


def decision_key(pulled: PullResult, measured: dict, settings: StepSettings, cfg: ProjectConfig) -> str:
    """Key of one decision: the labels, the measured budgets AND everything the decision depends on.

    Changing the label cap, targets, policy or calibration makes a new decision run, so MLflow and
    Label Studio never disagree about the current decision.
    """
    measured_part = "-".join(map(str, sorted(measured))) or "none"
    return "-".join([label_set_hash(pulled.examples), measured_part, _settings_hash(settings, cfg)])


def iteration_key(pulled: PullResult, settings: StepSettings, cfg: ProjectConfig) -> str:
    """Key of an iteration's parent run in MLflow: its labels and the settings its decision depends on."""
    return f"{label_set_hash(pulled.examples)}-{_settings_hash(settings, cfg)}"


@task(name="end-iteration", persist_result=False, **LOG_RETRY)
def end_iteration(svc: Services, summary: dict) -> str | None:
    """Finish the iteration's parent run (when it wrote a child) with the summary's counts."""
    return svc.runs.end_iteration(iteration_metrics(summary))


def run_iteration(svc: Services) -> dict:
    """One iteration for an opened project (no lock; :func:`loop_iteration` adds it). Returns a summary dict.

    The MLflow runs it writes (estimate, fine-tunes, decision) are nested under one ``iteration``
    parent run, created with the first of them; a failed iteration leaves that parent FAILED.
    """
    try:
        summary = _iterate(svc)
    except BaseException:
        try:
            svc.runs.end_iteration(status="FAILED")
        except Exception as exc:  # noqa: BLE001 - MLflow down too: the original error is the one to raise
            _logger().warning("%s: could not mark the iteration's MLflow run FAILED: %s", svc.config.name, exc)
        raise
    end_iteration(svc, summary)
    return summary


def _iterate(svc: Services) -> dict:
    cfg = svc.config
    logger = _logger()
    roles = svc.runs.read_bootstrap()
    if not roles:
        from dataeff.errors import DataError

        raise DataError(f"project {cfg.name}: not bootstrapped yet; run `dataeff bootstrap {cfg.name}` first")
    stored_cursor = svc.runs.read_cursor()
    pulled = pull_labels(svc, Cursor.from_dict(stored_cursor) if stored_cursor else None)
    warnings = pull_warnings(pulled)
    for line in warnings:
        logger.warning("%s: %s", cfg.name, line)
    role_of = {i: r for r, ids in roles.items() for i in ids}
    sets = partition(list(pulled.examples), role_of)
    labeled_ids = {str(e.id) for e in pulled.examples}
    n_lowconf, n_eval = len(roles.get(ROLE_LOWCONF, [])), len(roles.get(ROLE_EVAL, []))
    settings = settings_for(cfg, n_lowconf)
    svc.runs.begin_iteration(iteration_key(pulled, settings, cfg), len(labeled_ids))
    logger.info(
        "%s: %d labeled (%d/%d low-confidence, %d/%d eval, %d train); %d changed, %d deleted",
        cfg.name,
        len(labeled_ids),
        len(sets.lowconf),
        n_lowconf,
        len(sets.eval),
        n_eval,
        len(sets.train),
        len(pulled.changed_ids),
        len(pulled.deleted_ids),
    )

    # Fine-tunes the labels now cover (zero-shot first), each logged as soon as it is measured.
    done = svc.runs.finetuned_budgets()
    eval_ready = n_eval > 0 and len(sets.eval) >= n_eval
    finetuned_now = []
    finetune_runs: dict[int, str] = {}
    for budget in budgets_due(len(sets.train), cfg.budgets, done, eval_ready):
        logger.info("%s: fine-tune at %d labels", cfg.name, budget)
        done[budget], finetune_runs[budget] = measure_and_log(svc, sets, budget)
        finetuned_now.append(budget)

    coslow_res, estimate_logged = None, False
    if n_lowconf and len(sets.lowconf) >= n_lowconf:
        coslow_res = estimate(svc, sets)
        mismatch = dtype_warning(get_calibration(cfg.calibration), coslow_res.dtype)
        if mismatch:
            warnings.append(mismatch)
            logger.warning("%s: %s", cfg.name, mismatch)
    inputs = StepInputs(
        labeled=len(sets.train),
        lowconf_total=n_lowconf,
        lowconf_labeled=len(sets.lowconf),
        coslow=coslow_res.coslow if coslow_res else None,
        measured=done,
        n_eval=n_eval or None,
        human_score=cfg.human_score,
    )
    calibration = get_calibration(cfg.calibration) if coslow_res else None
    outcome = step(inputs, calibration, settings)
    assessment, decision = outcome.assessment, outcome.decision
    if assessment is not None and coslow_res is not None:  # an assessment exists only once CoS-Low is computed
        figure = plot_curve(
            assessment.posterior or assessment.prediction,
            measured=done,
            targets=cfg.targets,
            title=f"{cfg.name}: predicted vs measured ({assessment.source})",
            s0=assessment.zero_shot,
            h=assessment.ceiling,
            label_cap=cfg.label_cap,
            metric=cfg.task.metric,
            n_eval=len(sets.eval) or None,
        )
        estimate_logged = log_estimate(svc, sets, coslow_res, assessment, figure)
        predicted = _predicted_before(inputs, calibration, settings, finetuned_now)
        if predicted:
            log_predicted(svc, finetune_runs, predicted)
        if estimate_logged or finetuned_now:
            log_comparison(svc, figure, _comparison_rows(assessment, cfg), dict(done), predicted)

    summary = {
        "project": cfg.name,
        "labeled": len(labeled_ids),
        "train": len(sets.train),
        "eval": len(sets.eval),
        "lowconf": len(sets.lowconf),
        "changed": len(pulled.changed_ids),
        "deleted": len(pulled.deleted_ids),
        "errors": [asdict(e) for e in pulled.errors],
        "unmanaged_task_ids": list(pulled.unmanaged_task_ids),
        "warnings": warnings,
        "coslow": coslow_res.as_dict() if coslow_res else None,
        "calibration": cfg.calibration,
        "measured": {str(b): s for b, s in sorted(done.items())},
        "finetuned_now": finetuned_now,
        **outcome.summary(),  # assessment, p_within_cap, label_cap, curve_model, decision
    }
    decision_run = log_decision(svc, decision_key(pulled, done, settings, cfg), decision, summary, assessment)
    requested = request_next(svc, decision, roles, labeled_ids)
    update_status(svc, decision)
    if pulled.cursor.as_dict() != stored_cursor:
        save_cursor(svc, pulled.cursor.as_dict())
    summary["requested"] = len(requested)
    # pre-annotations from the best model now (re-scored when it changed); never fails the iteration
    summary["prelabels"] = refresh_prelabels(svc, roles, labeled_ids | {e.dataeff_id for e in pulled.errors})
    summary["new_runs"] = int(estimate_logged) + len(finetuned_now) + int(decision_run.created)
    logger.info("%s: %s — %s", cfg.name, decision.action, decision.reason)
    return summary


def _predicted_before(
    inputs: StepInputs, calibration: Calibration | None, settings: StepSettings, finetuned_now: Sequence[int]
) -> dict[int, tuple[float, float, float]]:
    """The score predicted for each budget fine-tuned in this iteration, before it was measured.

    ``{budget: (median, lo, hi)}`` from the curve posterior of the points measured before this
    iteration (the zero-shot kept: it sets the absolute scale), so the prediction never saw the
    point it predicts. Empty without a posterior (no zero-shot) and for the zero-shot itself.
    """
    new = [b for b in finetuned_now if b > 0]
    if not new or inputs.coslow is None or calibration is None:
        return {}
    before = {b: s for b, s in inputs.measured.items() if b == 0 or b not in finetuned_now}
    prior = step(replace(inputs, measured=before), calibration, settings).assessment
    if prior is None or prior.posterior is None:
        return {}
    med, lo, hi = prior.posterior.curve_band(new)
    return {b: (float(med[i]), float(lo[i]), float(hi[i])) for i, b in enumerate(new)}


def _comparison_rows(assessment: Assessment, cfg: ProjectConfig) -> list[dict]:
    """Per budget: the posterior's predicted score (band) beside the measured one."""
    budgets = sorted(set(cfg.budgets) | set(assessment.measured))
    med: Sequence[float | None]
    lo: Sequence[float | None]
    hi: Sequence[float | None]
    if assessment.posterior is not None:
        med, lo, hi = (list(map(float, a)) for a in assessment.posterior.curve_band(budgets))
    else:  # no zero-shot yet: scores cannot be predicted on the absolute scale
        med = lo = hi = [None] * len(budgets)
    return [
        {"budget": b, "predicted": med[i], "lo": lo[i], "hi": hi[i], "actual": assessment.measured.get(b)}
        for i, b in enumerate(budgets)
    ]


@flow(name="dataeff-loop", log_prints=True)
def loop_iteration(project: str, home: str | None = None, lock_timeout_seconds: float = 3600) -> dict:
    """One loop iteration of ``project`` (at most one per project at a time)."""
    from pathlib import Path

    config = ProjectConfig.load(project, Path(home) if home else None)
    with project_slot(config.name, timeout_seconds=lock_timeout_seconds, logger=_logger()):
        return run_iteration(open_services(config))
