"""One loop run per project at a time, with Prefect global concurrency limits.

A limit used by ``concurrency(name)`` that was never created is silently SKIPPED by Prefect
3.8 (a warning only), so :func:`project_slot` creates the limit first (limit 1) and then
acquires it with ``strict=True``: a second run of the same project waits for the first.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

from prefect import get_client
from prefect.concurrency.sync import concurrency


def limit_name(project: str) -> str:
    """Name of the project's global concurrency limit (``dataeff-loop-<project>``)."""
    return "dataeff-loop-" + re.sub(r"[^A-Za-z0-9_-]", "-", project)


def ensure_limit(project: str, limit: int = 1) -> str:
    """Create (or update to ``limit`` slots; idempotent) the project's global concurrency limit; return its name."""
    name = limit_name(project)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name=name, limit=limit)
    return name


@contextlib.contextmanager
def project_slot(project: str, timeout_seconds: float | None = 3600) -> Iterator[None]:
    """Hold the project's single slot for the duration of the block (waits while another run holds it)."""
    name = ensure_limit(project)
    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True):
        yield
