"""The study as a Prefect flow (``dataeff-study``): its run history in the team's Prefect server.

:func:`flows.study.run_study` stays a plain function (Ray workers import that module, never
Prefect); this flow only wraps it, so a study started from a Prefect deployment or a script with
``PREFECT_API_URL`` set is recorded next to the loop's runs, with the same MLflow runs and keys.
"""

from __future__ import annotations

from prefect import flow

from dataeff.study import StudySettings
from flows.runners import make_runner
from flows.study import run_study
from integrations.mlflow_tracking import Tracker


@flow(name="dataeff-study", log_prints=True, validate_parameters=False)
def study_flow(
    settings: StudySettings,
    tracking_uri: str,
    runner: str = "local",
    ray_address: str | None = None,
    out: str | None = None,
    calibration_out: str | None = None,
    results_dir: str | None = None,
) -> dict:
    """Run (or resume) a study on ``runner`` (``"local"``/``"ray"``, see :func:`flows.runners.make_runner`),
    tracked in the MLflow of ``tracking_uri``; returns :func:`flows.study.run_study`'s summary."""
    units = make_runner(runner, address=ray_address) if runner != "local" else None
    try:
        return run_study(
            settings,
            Tracker(tracking_uri),
            out=out,
            calibration_out=calibration_out,
            progress=False,
            results_dir=results_dir,
            runner=units,
            command=f"flow dataeff-study (runner {runner})",
        )
    finally:
        if units is not None:
            units.close()
