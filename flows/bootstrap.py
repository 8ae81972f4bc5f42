"""Bootstrap a project: the model answers every pool item once; the least confident go first.

1. Read the pool from Label Studio (the truth about items).
2. Confidence of the model's greedy answer for every item (batched; GPU when present).
3. Draw the low-confidence batch (k items from the bottom decile) and the held-out eval split.
4. Log the roles, the confidence table and a histogram to MLflow (a ``bootstrap`` run).
5. Put the low-confidence batch, then the eval split, at the top of the annotators' queue; every
   scored item gets the model's answer as a pre-annotation (choice tasks: only valid labels).

Idempotent: a project already bootstrapped keeps its roles (they are read back from MLflow) and
only the queue is pushed again.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from dataeff.confidence import score_confidence, select_low_confidence
from dataeff.data import Example
from dataeff.iteration import ROLE_EVAL, ROLE_LOWCONF, choose_eval_split
from dataeff.metrics import match_label
from dataeff.plots import plot_confidence
from dataeff.project import ProjectConfig
from flows.loop import RETRY, _logger
from flows.services import Services, get_model, open_services

LOWCONF_PRIORITY = 1_000_000
EVAL_PRIORITY = 500_000


@task(name="read-pool", persist_result=False, **RETRY)
def read_pool(svc: Services) -> list[Example]:
    return [Example(prompt=str(r.data.get("prompt", "")), id=r.dataeff_id) for r in svc.ls.tasks(svc.project_id)]


@task(name="score-confidence", persist_result=False)
def score_pool(svc: Services, pool: list[Example], batch_size: int) -> list:
    cfg = svc.config
    loaded = get_model(cfg.model)
    return score_confidence(loaded, examples=pool, batch_size=batch_size, max_new_tokens=cfg.max_new_tokens,
                            chat_template=cfg.chat_template, stop_strings=None if cfg.chat_template else ("\n",))


@task(name="queue-batches", persist_result=False, **RETRY)
def queue(svc: Services, roles: dict, answers: dict[str, tuple[str, float]]) -> None:
    cfg = svc.config
    svc.ls.ensure_priority_view(svc.project_id)
    svc.ls.request_labels(svc.project_id, roles[ROLE_LOWCONF], priority_base=LOWCONF_PRIORITY)
    svc.ls.request_labels(svc.project_id, roles[ROLE_EVAL], priority_base=EVAL_PRIORITY)
    if answers:
        svc.ls.push_predictions(svc.project_id, answers, model_version=f"dataeff-{cfg.model}")
    k, e = len(roles[ROLE_LOWCONF]), len(roles[ROLE_EVAL])
    svc.ls.set_status(svc.project_id, f"dataeff needs the {k} hard examples first (top of the 'dataeff priority' tab), "
                                      f"then {e} held-out examples for evaluation; then batches as requested")


def _pre_annotations(cfg: ProjectConfig, scores: list) -> dict[str, tuple[str, float]]:
    """The model's answers as pre-annotations (score = its confidence); for a choice task only
    answers that map to a label."""
    out = {}
    for s in scores:
        if not s.answer:
            continue
        answer = match_label(s.answer, cfg.task.labels) if cfg.task.labels else s.answer
        if answer:
            out[s.id] = (answer, float(s.confidence))
    return out


def run_bootstrap(svc: Services, batch_size: int = 16) -> dict:
    cfg = svc.config
    logger = _logger()
    roles = svc.tracker.read_bootstrap(cfg.name, cfg.model)
    answers: dict[str, tuple[str, float]] = {}
    if roles:
        logger.info("%s: already bootstrapped; pushing the queue again", cfg.name)
    else:
        pool = read_pool(svc)
        logger.info("%s: scoring the confidence of %d pool items with %s", cfg.name, len(pool), cfg.model)
        fixed = set(cfg.fixed_eval_ids)
        pool = [e for e in pool if e.id not in fixed]  # a labeled eval split is never a low-confidence candidate
        scores = score_pool(svc, pool, batch_size)
        lowconf = select_low_confidence(scores, k=cfg.low_confidence_k, fraction=0.1, seed=cfg.seed)
        evals = list(cfg.fixed_eval_ids) or choose_eval_split([e.id for e in pool], cfg.eval_size, exclude=lowconf,
                                                              seed=cfg.seed)
        roles = {ROLE_LOWCONF: list(lowconf), ROLE_EVAL: evals}
        confs = [s.confidence for s in scores]
        stats = {"pool": len(pool), "mean_confidence": sum(confs) / len(confs),
                 "lowconf_max_confidence": max(s.confidence for s in scores if s.id in set(lowconf)),
                 "empty_answers": sum(1 for s in scores if s.n_tokens == 0)}
        figure = plot_confidence([s.confidence for s in scores], highlight=[s.confidence for s in scores if s.id in set(lowconf)],
                                 title=f"{cfg.name}: confidence of {cfg.model} over the pool")
        svc.tracker.log_bootstrap(cfg.name, cfg.model, roles, stats, [s.as_dict() for s in scores], figure=figure)
        answers = _pre_annotations(cfg, scores)
    queue(svc, roles, answers)
    return {"project": cfg.name, "lowconf": len(roles[ROLE_LOWCONF]), "eval": len(roles[ROLE_EVAL]),
            "pre_annotations": len(answers)}


@flow(name="dataeff-bootstrap", log_prints=True)
def bootstrap(project: str, home: str | None = None, batch_size: int = 16) -> dict:
    """Score the pool and queue the low-confidence batch and the eval split (idempotent)."""
    config = ProjectConfig.load(project, Path(home) if home else None)
    return run_bootstrap(open_services(config), batch_size=batch_size)
