"""Bootstrap a project: the model answers every pool item once; the least confident go first.

1. Read the pool from Label Studio (the truth about items).
2. Leave out the items whose prompt is beyond ``max_prompt_tokens`` (project config): each is
   reported by id with its length, the model never runs on it.
3. Confidence of the model's greedy answer for every other item (batched; GPU when present).
4. Draw the low-confidence batch (k items from the bottom decile) and the held-out eval split
   (neither ever holds a skipped item).
5. Log the roles, the confidence table and a histogram to MLflow (a ``bootstrap`` run).
6. Put the low-confidence batch, then the eval split, at the top of the annotators' queue, show
   the status to annotators (project description and labeling instructions) and pre-annotate
   with the model's answers only when they help (:mod:`dataeff.prelabel`: an answer must name
   exactly one label; none at all when one label is more than 60% of the answers on a task with
   3+ labels, a degenerate guesser; the reason is logged and returned).

Idempotent: a project already bootstrapped keeps its roles (they are read back from MLflow) and
only the queue is pushed again (the summary then has no ``skipped`` list: nothing was checked).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from dataeff.adapters import base_model_version
from dataeff.bounds import RejectedItem, split_by_token_bounds
from dataeff.confidence import ConfidenceScore, ConfidenceScores, score_confidence, select_low_confidence
from dataeff.data import Example
from dataeff.iteration import ROLE_EVAL, ROLE_LOWCONF, ROLE_TOO_LONG, choose_eval_split
from dataeff.plots import plot_confidence
from dataeff.prelabel import PrelabelPlan, plan_prelabels, settings_from
from dataeff.project import ProjectConfig
from dataeff.queue import EVAL_PRIORITY, LOWCONF_PRIORITY, priorities, waiting_priorities
from flows.loop import _logger
from flows.predictions import write_record
from flows.runners import ModelSpec, Runner, make_runner, score_pool_sharded
from flows.services import RETRY, Services, get_model, open_services
from integrations.label_studio import PRIORITY_FIELD


@task(name="read-pool", persist_result=False, **RETRY)
def read_pool(svc: Services) -> list[Example]:
    return [Example(prompt=str(r.data.get("prompt", "")), id=r.dataeff_id) for r in svc.ls.tasks(svc.project_id)]


@task(name="check-bounds", persist_result=False)
def check_bounds(svc: Services, pool: list[Example]) -> tuple[list[Example], list[RejectedItem]]:
    """``(kept, skipped)``: pool items within ``max_prompt_tokens`` and those beyond (tokenized once, never run)."""
    cfg = svc.config
    return split_by_token_bounds(
        get_model(cfg.model).tokenizer,
        pool,
        max_prompt_tokens=cfg.max_prompt_tokens,
        max_answer_tokens=cfg.max_answer_tokens,
        chat_template=cfg.chat_template,
    )


@task(name="score-confidence", persist_result=False)
def score_pool(svc: Services, pool: list[Example], batch_size: int | None) -> ConfidenceScores:
    cfg = svc.config
    loaded = get_model(cfg.model)
    return score_confidence(
        loaded,
        examples=pool,
        batch_size=batch_size,
        max_new_tokens=cfg.max_new_tokens,
        chat_template=cfg.chat_template,
        stop_strings=None if cfg.chat_template else ("\n",),
    )


@task(name="queue-batches", persist_result=False, **RETRY)
def queue(svc: Services, roles: dict, answers: dict[str, tuple[str, float]]) -> None:
    cfg = svc.config
    svc.ls.ensure_priority_view(svc.project_id)
    records = svc.ls.tasks(svc.project_id)
    reserved = {**priorities(roles[ROLE_LOWCONF], LOWCONF_PRIORITY), **priorities(roles[ROLE_EVAL], EVAL_PRIORITY)}
    waiting = waiting_priorities(
        {r.dataeff_id: r.data.get(PRIORITY_FIELD) for r in records},
        seed=cfg.seed,
        reserved=reserved,
        last=roles.get(ROLE_TOO_LONG, []),
    )
    svc.ls.push_priorities(svc.project_id, {**reserved, **waiting}, _records=records)
    if answers:
        svc.ls.push_predictions(svc.project_id, answers, model_version=base_model_version(cfg.model))
    svc.ls.set_status(svc.project_id, bootstrap_status(len(roles[ROLE_LOWCONF]), len(roles[ROLE_EVAL])))


def bootstrap_status(n_lowconf: int, n_eval: int) -> str:
    """The annotators' status after bootstrap: what to label first, and when the estimate comes."""
    return (
        f"label the {n_lowconf} hard examples first, then the {n_eval} examples the model is tested on; "
        f"after the {n_lowconf} hard ones dataeff says here how many more labels it expects and asks for "
        "them in batches"
    )


def _pre_annotations(cfg: ProjectConfig, scores: list[ConfidenceScore]) -> PrelabelPlan:
    """The model's answers to push as pre-annotations (score = its confidence), by the rules of
    :mod:`dataeff.prelabel`: exact labels only, none from a degenerate guesser."""
    return plan_prelabels(
        ((s.id, s.answer, s.confidence) for s in scores),
        cfg.task.labels or None,
        settings_from(getattr(cfg, "prelabel", None)),
    )


def score_pool_on(runner: Runner, svc: Services, pool: list[Example], batch_size: int | None) -> ConfidenceScores:
    """:func:`score_pool` with the pool sharded across the runner's workers (merged in input order)."""
    cfg = svc.config
    return score_pool_sharded(
        runner,
        ModelSpec(cfg.model),
        pool,
        batch_size=batch_size,
        max_new_tokens=cfg.max_new_tokens,
        chat_template=cfg.chat_template,
        stop_strings=None if cfg.chat_template else ("\n",),
    )


def run_bootstrap(svc: Services, batch_size: int | None = None, runner: Runner | None = None) -> dict:
    """Bootstrap the project of ``svc``; ``runner``: a parallel runner (Ray) shards the pool's scoring."""
    cfg = svc.config
    logger = _logger()
    roles = svc.runs.read_bootstrap()
    answers: dict[str, tuple[str, float]] = {}
    skipped: list[RejectedItem] | None = None
    prelabel: str | None = None
    if roles:
        logger.info("%s: already bootstrapped; pushing the queue again", cfg.name)
    else:
        pool, skipped = check_bounds(svc, read_pool(svc))
        for item in skipped:
            logger.warning("%s: skipped pool item %s: %s", cfg.name, item.id, item.reason)
        logger.info(
            "%s: scoring the confidence of %d pool items with %s (%d skipped as too long)",
            cfg.name,
            len(pool),
            cfg.model,
            len(skipped),
        )
        fixed = set(cfg.fixed_eval_ids)
        pool = [e for e in pool if e.id not in fixed]  # a labeled eval split is never a low-confidence candidate
        if runner is not None and runner.parallel:
            scores = score_pool_on(runner, svc, pool, batch_size)
        else:
            scores = score_pool(svc, pool, batch_size)
        lowconf = select_low_confidence(scores, k=cfg.low_confidence_k, fraction=0.1, seed=cfg.seed)
        too_long = {item.id for item in skipped}
        if cfg.fixed_eval_ids:  # a given eval item the model cannot be run on is left out of the split
            evals = [i for i in cfg.fixed_eval_ids if i not in too_long]
        else:
            evals = choose_eval_split([str(e.id) for e in pool], cfg.eval_size, exclude=lowconf, seed=cfg.seed)
        roles = {ROLE_LOWCONF: list(lowconf), ROLE_EVAL: evals}
        if too_long:
            roles[ROLE_TOO_LONG] = sorted(too_long)  # so the loop never asks the team to label them
        confs = [s.confidence for s in scores]
        stats = {
            "pool": len(pool),
            "mean_confidence": sum(confs) / len(confs),
            "lowconf_max_confidence": max(s.confidence for s in scores if s.id in set(lowconf)),
            "empty_answers": sum(1 for s in scores if s.n_tokens == 0),
            "skipped_too_long": len(skipped),
        }
        if scores.batch_size:  # the batch size chosen for the device
            stats["confidence_batch_size"] = scores.batch_size
        figure = plot_confidence(
            [s.confidence for s in scores],
            highlight=[s.confidence for s in scores if s.id in set(lowconf)],
            title=f"{cfg.name}: confidence of {cfg.model} over the pool",
        )
        svc.runs.log_bootstrap(roles, stats, scores, figure=figure)
        plan = _pre_annotations(cfg, scores)
        # the eval split is labeled blind: a pre-ticked model answer there would bias the very labels
        # the model's scores are measured against
        eval_ids = set(evals)
        answers = {i: a for i, a in plan.answers.items() if i not in eval_ids}
        prelabel = plan.reason
        if len(answers) < len(plan.answers):
            prelabel += f"; none on the {len(plan.answers) - len(answers):,} eval items (labeled blind)"
        if plan.push:
            logger.info("%s: pre-annotations: %s", cfg.name, plan.reason)
        else:
            logger.warning("%s: no pre-annotations: %s", cfg.name, plan.reason)
    queue(svc, roles, answers)
    if prelabel is not None:  # the base model is judged on the pool once: the loop does not score it again
        write_record(
            cfg.name, {"model_version": base_model_version(cfg.model), "pushed": len(answers), "reason": prelabel}
        )
    out = {
        "project": cfg.name,
        "lowconf": len(roles[ROLE_LOWCONF]),
        "eval": len(roles[ROLE_EVAL]),
        "pre_annotations": len(answers),
    }
    if prelabel is not None:
        out["pre_annotations_reason"] = prelabel
    if skipped is not None:
        out["scored"] = len(scores)
        out["skipped"] = [{"id": item.id, "reason": item.reason} for item in skipped]
    return out


@flow(name="dataeff-bootstrap", log_prints=True)
def bootstrap(
    project: str,
    home: str | None = None,
    batch_size: int | None = None,
    runner: str = "local",
    ray_address: str | None = None,
) -> dict:
    """Score the pool and queue the low-confidence batch and the eval split (idempotent).

    ``runner="ray"`` scores the pool in shards on a Ray cluster (``ray_address``: see
    :func:`flows.runners.make_runner`); the scores are the local ones, in input order.
    """
    config = ProjectConfig.load(project, Path(home) if home else None)
    if runner == "local":
        return run_bootstrap(open_services(config), batch_size=batch_size)
    pool_runner = make_runner(runner, address=ray_address)
    try:
        return run_bootstrap(open_services(config), batch_size=batch_size, runner=pool_runner)
    finally:
        pool_runner.close()
