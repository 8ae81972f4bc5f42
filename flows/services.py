"""Open the services a project talks to, and keep one loaded model per process."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

from dataeff.models import LoadedModel, load_model
from dataeff.project import ProjectConfig
from integrations.label_studio import LabelStudioClient
from integrations.mlflow_tracking import ProjectTracker, Tracker, TrackingError

log = logging.getLogger(__name__)


@dataclass
class Services:
    """A project's config with its Label Studio client and MLflow tracker."""

    config: ProjectConfig
    ls: LabelStudioClient
    tracker: Tracker

    @property
    def runs(self) -> ProjectTracker:
        """The tracker bound to this project and its model."""
        return self.tracker.for_project(self.config.name, self.config.model)

    @property
    def project_id(self) -> int:
        if self.config.label_studio_project_id is None:
            from dataeff.errors import DataError

            raise DataError(f"project {self.config.name}: no Label Studio project yet; run `dataeff project create`")
        return int(self.config.label_studio_project_id)


def open_services(config: ProjectConfig) -> Services:
    """Clients for ``config`` (the Label Studio token comes from the env var the config names)."""
    ls = LabelStudioClient(config.label_studio_url, config.label_studio_token())
    return Services(config=config, ls=ls, tracker=Tracker(config.tracking_uri))


def preflight(config: ProjectConfig, *, bootstrapped: bool = True) -> Services:
    """Check a project's services before any flow starts: token set and accepted, Label Studio project there,
    MLflow readable (and, with ``bootstrapped``, the project bootstrapped). Raises a one-line
    :class:`~dataeff.errors.DataEffError` naming what to fix; returns the opened services."""
    from integrations.label_studio import LabelStudioAuthError

    svc = open_services(config)
    try:
        svc.ls.project_info(svc.project_id)  # LabelStudioAuthError / ProjectNotFound / LabelStudioUnavailable
    except LabelStudioAuthError as exc:
        raise LabelStudioAuthError(
            f"project {config.name}: {exc}; this project reads its token from ${config.label_studio_token_env}"
        ) from None
    if bootstrapped and not svc.runs.read_bootstrap():
        from dataeff.errors import DataError

        raise DataError(f"project {config.name}: not bootstrapped yet; run `dataeff bootstrap {config.name}` first")
    return svc


@functools.lru_cache(maxsize=2)
def get_model(source: str, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load a model once per process (the loop runs many iterations on one model)."""
    return load_model(source, device=device, dtype=dtype)


def _failure(state) -> Exception | None:
    """The exception a finished Prefect state holds, or ``None`` when it completed."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - returned to the caller, which classifies it
        return exc
    return None


def retry_on_unavailable(task, old_state, new_state) -> bool:
    """Prefect ``retry_condition_fn``: retry service blips (Label Studio down/slow, MLflow errors), not bad input.

    Anything but a :class:`~dataeff.errors.DataError` (bad input, which another try cannot fix) is
    worth another try: Label Studio unavailable, HTTP or database errors, MLflow errors.
    """
    from dataeff.errors import DataError

    exc = _failure(new_state)
    return exc is not None and not isinstance(exc, DataError)


def retry_tracking(task, task_run, state) -> bool:
    """:func:`retry_on_unavailable` for MLflow logging, saying when MLflow is unreachable and which attempt this is."""
    retry = retry_on_unavailable(task, task_run, state)
    exc = _failure(state)
    if retry and isinstance(exc, TrackingError):
        why = str(exc) if len(str(exc)) <= 200 else str(exc)[:200] + "..."
        _run_logger().warning(
            "MLflow is unreachable (%s); the finished result is kept and logging will be retried "
            "(attempt %d of %d); nothing is measured again",
            why,
            getattr(task_run, "run_count", 0),
            (task.retries or 0) + 1,
        )
    return retry


def _run_logger():
    """The Prefect run logger when inside a run (shown in the Prefect UI), else this module's."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run context
        return log


class RetryOptions(TypedDict):
    """Retry keywords of Prefect's ``@task`` (typed, so that ``@task(**RETRY)`` matches Prefect's signature)."""

    retries: int
    retry_delay_seconds: list[float]
    retry_condition_fn: Callable[..., bool]


RETRY = RetryOptions(retries=3, retry_delay_seconds=[1, 2, 4], retry_condition_fn=retry_on_unavailable)
"""Label Studio calls (and quick reads): service blips, seconds."""
LOG_RETRY = RetryOptions(
    retries=8, retry_delay_seconds=[5, 10, 20, 40, 60, 120, 120, 120], retry_condition_fn=retry_tracking
)
"""Logging a finished result to MLflow: rides out an outage of ~8 minutes, saying so at each try;
the result is kept on disk meanwhile (:mod:`flows.pending`), so even a longer outage loses nothing."""
