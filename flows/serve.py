"""Serve the loop: one interval-scheduled Prefect deployment per project.

Schedules need a Prefect server with its scheduler (``prefect server start``, or the compose
stack in docker/); the ephemeral API runs one-off flows only. Never two iterations of one project
at a time: the deployment's own concurrency limit (1, extra runs wait in the queue) plus the
project's global concurrency slot taken inside the flow (covers runs started by hand too).
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect import serve

from flows.locks import ensure_limit
from flows.loop import loop_iteration


def deployment_name(project: str) -> str:
    return f"loop-{project}"


def build_deployments(projects: Sequence[str], interval_seconds: int = 900, home: str | None = None) -> list:
    """One deployment per project: ``dataeff-loop/loop-<project>`` every ``interval_seconds``."""
    return [
        loop_iteration.to_deployment(
            name=deployment_name(p),
            interval=interval_seconds,
            parameters={"project": p, "home": home},
            concurrency_limit=1,
            description=f"dataeff annotation loop for project {p}",
            tags=["dataeff", f"project:{p}"],
        )
        for p in projects
    ]


def serve_projects(projects: Sequence[str], interval_seconds: int = 900, home: str | None = None) -> None:
    """Create the projects' concurrency limits, then serve their deployments (blocks until stopped)."""
    for p in projects:
        ensure_limit(p)
    serve(*build_deployments(projects, interval_seconds, home))
