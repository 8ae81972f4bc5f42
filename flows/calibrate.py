"""Fit a model family's calibration from projects whose curves were measured by the loop.

For each project: its CoS-Low (latest estimate) and its data-efficiency AUC computed from the
measured fine-tunes (MLflow) exactly as the paper does; then a least-squares fit with
leave-one-task-out error, logged to MLflow and saved as JSON for later projects of that family.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import flow

from dataeff.calibration import fit_calibration
from dataeff.efficiency import data_efficiency_auc
from dataeff.errors import DataError
from dataeff.project import ProjectConfig, dataeff_home
from integrations.mlflow_tracking import Tracker


def calibration_rows(projects: Sequence[ProjectConfig], tracker_for) -> list[tuple[str, float, float]]:
    """``(task, coslow, auc)`` per project with an estimate and a measured zero-shot point."""
    rows = []
    for cfg in projects:
        runs = tracker_for(cfg).for_project(cfg.name, cfg.model)
        est = runs.latest_estimate()
        curve = runs.finetuned_budgets()
        if not est or 0 not in curve or len(curve) < 2:
            raise DataError(
                f"project {cfg.name}: needs a CoS-Low estimate and a measured curve "
                f"(zero-shot + at least one budget); has estimate={bool(est)}, budgets={sorted(curve)}"
            )
        auc = data_efficiency_auc(curve, human_score=cfg.human_score, max_budget=cfg.max_budget)
        rows.append((cfg.name, float(est["metrics"]["coslow"]), float(auc)))
    return rows


@flow(name="dataeff-calibrate", log_prints=True)
def calibrate_family(
    family: str, projects: Sequence[str], tracking_uri: str | None = None, out: str | None = None
) -> dict:
    """Fit ``AUC = c * CoS-Low + I`` for ``family`` from ``projects``; save and log it."""
    configs = [ProjectConfig.load(p) for p in projects]
    trackers: dict[str, Tracker] = {}

    def tracker_for(cfg: ProjectConfig) -> Tracker:
        uri = tracking_uri or cfg.tracking_uri
        return trackers.setdefault(uri, Tracker(uri))

    rows = calibration_rows(configs, tracker_for)
    cutoffs = sorted({cfg.max_budget for cfg in configs})
    if len(cutoffs) > 1:
        raise DataError(f"projects {list(projects)} measure their AUC up to different N {cutoffs}; fit one N at a time")
    cal = fit_calibration(
        rows,
        family=family,
        fit_kind="lora",
        max_budget=cutoffs[0] if cutoffs else None,
        source=f"dataeff loop: LoRA fine-tune curves of projects {', '.join(projects)}",
    )
    path = Path(out) if out else dataeff_home() / "calibrations" / f"{family}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cal.save(path)
    tracker_for(configs[0]).log_calibration(family, cal.as_dict())
    return {"calibration": cal.as_dict(), "saved": str(path), "rows": rows}
