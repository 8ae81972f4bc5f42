"""One loop run per project at a time, with a Prefect global concurrency limit held under a lease.

A limit used by ``concurrency(name)`` that was never created is silently SKIPPED by Prefect
3.8 (a warning only), so :func:`project_slot` creates the limit first (limit 1) and then
acquires it with ``strict=True``: a second run of the same project waits for the first.

The slot is held under a Prefect concurrency *lease* (:data:`LEASE_SECONDS`), renewed by a
background thread while the holder lives. A holder killed with SIGKILL stops renewing, its lease
expires and the slot is given back:

- on a full ``prefect server start`` by Prefect's own repossessor service;
- on the ephemeral API ``dataeff loop`` starts (and the test harness), which runs no repossessor,
  by :func:`reclaim_expired_leases`, which a waiting run calls while it polls. Leases must then
  live on disk (``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=...filesystem``, set by
  :func:`flows.runtime_env.configure_runtime`); in memory they would die with the killed process
  and leave the slot taken forever.

Who holds the slot and since when is kept beside the project config
(``$DATAEFF_HOME/locks/<project>.json``) so a waiting run can say what it waits for, and
``dataeff unlock PROJECT`` (:func:`unlock`) releases a stale lock at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from prefect import get_client
from prefect.concurrency.sync import concurrency

from dataeff.errors import DataEffError
from dataeff.project import dataeff_home

if TYPE_CHECKING:
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage

log = logging.getLogger(__name__)

LEASE_SECONDS = 60
"""Lease on the project slot, seconds: a killed holder's slot frees itself this long after its last
renewal (renewed every 45 s while the holder lives; 60 is the least Prefect 3.8 accepts)."""
POLL_SECONDS = 10
"""How often a waiting run re-tries the slot and looks for expired leases."""
ANNOUNCE_SECONDS = 60
"""How often a waiting run repeats what it waits for."""


class LockTimeout(DataEffError, TimeoutError):
    """The project's slot stayed taken past the wait limit. The message names the holder and the fix."""


def limit_name(project: str) -> str:
    """Name of the project's global concurrency limit (``dataeff-loop-<project>``)."""
    return "dataeff-loop-" + re.sub(r"[^A-Za-z0-9_-]", "-", project)


def ensure_limit(project: str, limit: int = 1) -> str:
    """Create (or update to ``limit`` slots; idempotent) the project's global concurrency limit; return its name."""
    name = limit_name(project)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name=name, limit=limit)
    return name


# ----------------------------------------------------------------------------- holder record


@dataclass
class Holder:
    """Who holds a project's slot: written on acquiring, removed on release (a SIGKILL leaves it behind)."""

    project: str
    pid: int
    host: str
    since: str  # ISO-8601 UTC
    flow_run_id: str | None = None
    lease_seconds: float = LEASE_SECONDS

    def alive_here(self) -> bool:
        """True when the holder's process is running on this host (unknown elsewhere: False)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def describe(self) -> str:
        run = f"flow run {self.flow_run_id}, " if self.flow_run_id else ""
        return f"{run}pid {self.pid} on {self.host}, since {self.since}"


def holder_path(project: str, home: Path | None = None) -> Path:
    return (home or dataeff_home()) / "locks" / f"{limit_name(project)}.json"


def read_holder(project: str, home: Path | None = None) -> Holder | None:
    """The recorded holder of ``project``'s slot, or ``None``."""
    try:
        return Holder(**json.loads(holder_path(project, home).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _write_holder(holder: Holder, home: Path | None = None) -> None:
    path = holder_path(holder.project, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(holder)), encoding="utf-8")
    tmp.replace(path)


def _clear_holder(project: str, pid: int | None = None, home: Path | None = None) -> None:
    """Remove the record (only our own when ``pid`` is given)."""
    found = read_holder(project, home)
    if found is not None and (pid is None or found.pid == pid):
        holder_path(project, home).unlink(missing_ok=True)


def _current_flow_run_id() -> str | None:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    except Exception:  # noqa: BLE001 - outside a flow run
        return None


# ----------------------------------------------------------------------------- leases


def _local_lease_storage() -> ConcurrencyLeaseStorage | None:
    """Prefect's on-disk lease storage when the API keeps its leases there (ephemeral API / harness), else None."""
    from prefect.settings import get_current_settings

    if not get_current_settings().server.concurrency.lease_storage.endswith(".filesystem"):
        return None
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage

    storage = ConcurrencyLeaseStorage()
    return storage if storage.storage_path.is_dir() else None


def _leases_of(limit_id, expired_only: bool) -> list:
    from prefect.utilities.asyncutils import run_coro_as_sync

    storage = _local_lease_storage()
    if storage is None:
        return []
    # annotated: mypy cannot solve run_coro_as_sync's result type (Prefect's TypeVar uses infer_variance)
    ids: list[UUID]
    if expired_only:
        ids = run_coro_as_sync(storage.read_expired_lease_ids(limit=1000))
    else:
        active: list[UUID] = run_coro_as_sync(storage.read_active_lease_ids(limit=1000))
        ids = active + run_coro_as_sync(storage.read_expired_lease_ids(limit=1000))
    leases = [run_coro_as_sync(storage.read_lease(i)) for i in ids]
    return [l for l in leases if l is not None and limit_id in l.resource_ids]


def reclaim_expired_leases(project: str) -> int:
    """Give back the slots of ``project``'s expired leases (a killed holder's); return how many were given back.

    What Prefect's repossessor service does on a full server, done here because the ephemeral API
    runs no such service. Uses the public ``decrement-with-lease`` API, so a lease the server no
    longer knows is a no-op. Nothing to do when the leases are not on this machine's disk.
    """
    name = limit_name(project)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
        leases = _leases_of(limit.id, expired_only=True)
        for lease in leases:
            client.release_concurrency_slots_with_lease(lease.id)
    return len(leases)


def _slot_free(project: str) -> bool:
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(limit_name(project))
    return limit.active_slots < limit.limit


def _wait_message(project: str, holder: Holder | None, waiting_since: datetime, timeout: float | None) -> str:
    who = f"another iteration ({holder.describe()})" if holder else "another run (no holder record)"
    limit = f"up to {timeout:.0f} s" if timeout is not None else "without a limit"
    return (
        f"project {project}: waiting for its loop lock, held by {who}; waiting since "
        f"{waiting_since:%H:%M:%S} UTC, {limit}. A killed holder's lock frees itself within "
        f"{LEASE_SECONDS} s; if no iteration of {project} is running, `dataeff unlock {project}` releases it now."
    )


@contextlib.contextmanager
def project_slot(
    project: str,
    timeout_seconds: float | None = 3600,
    lease_seconds: float = LEASE_SECONDS,
    poll_seconds: float = POLL_SECONDS,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> Iterator[Holder]:
    """Hold the project's single slot for the block; wait (saying for whom) while another run holds it.

    Args:
        project: project name.
        timeout_seconds: longest wait for the slot (``None``: no limit); then :class:`LockTimeout`.
        lease_seconds: lease on the slot (>= 60); renewed every 75% of it while this process lives.
        poll_seconds: how often the wait re-tries and gives back expired leases.
        logger: where the waiting messages go (default: this module's logger).

    Yields:
        The :class:`Holder` record written for this run.
    """
    logger = logger or log
    ensure_limit(project)
    started = time.monotonic()
    waiting_since = datetime.now(UTC)
    last_announce = None
    flow_run_id = _current_flow_run_id()
    lease_holder = None
    if flow_run_id:
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder

        lease_holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run_id))
    with contextlib.ExitStack() as stack:
        while True:
            given_back = reclaim_expired_leases(project)
            if given_back:
                logger.warning(
                    "project %s: gave back %d expired lock lease(s) of a holder that stopped renewing (killed?)",
                    project,
                    given_back,
                )
            elapsed = time.monotonic() - started
            if timeout_seconds is not None and elapsed >= timeout_seconds:
                holder = read_holder(project)
                raise LockTimeout(
                    f"project {project}: its loop lock is still held after {elapsed:.0f} s by "
                    f"{holder.describe() if holder else 'another run'}; if no iteration is running, "
                    f"run `dataeff unlock {project}`"
                )
            wait = poll_seconds if timeout_seconds is None else max(0.5, min(poll_seconds, timeout_seconds - elapsed))
            if _slot_free(project):  # ask first: a timed-out acquisition makes Prefect log an ERROR line
                try:
                    stack.enter_context(
                        concurrency(
                            limit_name(project),
                            occupy=1,
                            timeout_seconds=wait,
                            strict=True,
                            lease_duration=lease_seconds,
                            holder=lease_holder,
                            raise_on_lease_renewal_failure=False,
                        )
                    )
                    break
                except TimeoutError:  # another run took it first
                    pass
            else:
                time.sleep(wait)
            now = time.monotonic()
            if last_announce is None or now - last_announce >= ANNOUNCE_SECONDS:
                logger.warning(_wait_message(project, read_holder(project), waiting_since, timeout_seconds))
                last_announce = now
        me = Holder(
            project=project,
            pid=os.getpid(),
            host=socket.gethostname(),
            since=datetime.now(UTC).isoformat(timespec="seconds"),
            flow_run_id=flow_run_id,
            lease_seconds=lease_seconds,
        )
        _write_holder(me)
        stack.callback(_clear_holder, project, os.getpid())
        yield me


def unlock(project: str, force: bool = False) -> dict:
    """Release ``project``'s loop lock now (``dataeff unlock``): its leases, its slot count, its holder record.

    Refuses (:class:`~dataeff.errors.DataEffError`) while the recorded holder is a live process on
    this machine, unless ``force``.

    Returns:
        ``{"project", "limit", "was_locked", "released_leases", "holder"}``.
    """
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    name = limit_name(project)
    holder = read_holder(project)
    if holder is not None and holder.alive_here() and not force:
        raise DataEffError(
            f"project {project}: its lock is held by a running iteration ({holder.describe()}); "
            f"stop it first (kill {holder.pid}) or pass --force"
        )
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            _clear_holder(project)
            return {
                "project": project,
                "limit": name,
                "was_locked": False,
                "released_leases": 0,
                "holder": asdict(holder) if holder else None,
            }
        leases = _leases_of(limit.id, expired_only=False)
        for lease in leases:
            client.release_concurrency_slots_with_lease(lease.id)
        was_locked = limit.active_slots > 0
        if client.read_global_concurrency_limit_by_name(name).active_slots > 0:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
    _clear_holder(project)
    return {
        "project": project,
        "limit": name,
        "was_locked": was_locked,
        "released_leases": len(leases),
        "holder": asdict(holder) if holder else None,
    }
