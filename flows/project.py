"""Create (or update) an annotation project: Label Studio project + pool import, MLflow experiment, saved config."""

from __future__ import annotations

from collections.abc import Sequence

from dataeff.data import Example
from dataeff.project import ProjectConfig
from flows.services import open_services


def create_project(config: ProjectConfig, pool: Sequence[Example], eval_labeled: Sequence[Example] = ()) -> dict:
    """Idempotent: re-running with the same pool imports nothing twice and keeps the project id.

    Args:
        config: the project's settings (saved under ``$DATAEFF_HOME/projects``).
        pool: unlabeled items (stable ``id`` each).
        eval_labeled: an already-labeled held-out split; imported, annotated as ground truth, and
            used as the eval split instead of asking the team for one.
    """
    svc = open_services(config)
    description = (
        f"dataeff project for task {config.task.name}: label in the order of the 'dataeff priority' tab "
        f"(Label Tasks As Displayed). {config.task.instructions}"
    ).strip()
    pid = svc.ls.ensure_project(config.name, config.task, description=description)
    config.label_studio_project_id = pid
    report = svc.ls.import_pool(pid, list(pool) + [Example(prompt=e.prompt, id=e.id) for e in eval_labeled])
    svc.ls.ensure_priority_view(pid)
    if eval_labeled:
        config.fixed_eval_ids = [str(e.id) for e in eval_labeled]
        svc.ls.create_annotations(
            pid, {str(e.id): e.answer for e in eval_labeled}, ground_truth=True, skip_labeled=True
        )
    svc.tracker.experiment_for(config.name, model=config.model)
    path = config.save()
    return {
        "project": config.name,
        "label_studio_project_id": pid,
        "imported": report.created,
        "already_there": report.skipped,
        "invalid": [str(m) for m in report.invalid],
        "config": str(path),
        "label_studio_url": f"{config.label_studio_url}/projects/{pid}",
        "tracking_uri": svc.tracker.display_uri,
    }
