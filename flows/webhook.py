"""Early loop runs on Label Studio's word: a webhook only *schedules* an iteration; the flow does the work.

:class:`EarlyRuns` is what the ML backend's ``/webhook`` (and ``/train``) calls. :meth:`EarlyRuns.request`
returns at once (a flag set under a lock, well within Label Studio's 1 s webhook timeout); a worker
thread starts the run:

- **deployment**: when the project's loop is served as a Prefect deployment
  (``dataeff-loop/loop-<project>``, :mod:`flows.serve`) on the Prefect API this process talks to, a
  flow run of it is created with ``run_deployment(..., timeout=0)`` (tagged ``early-run``) and the
  serving process runs it;
- **local**: otherwise one ``loop_iteration`` runs in a child process (``python -c``; its output
  goes to this process's stdout/stderr), so a fine-tune never shares the backend's model and a
  crash of the iteration never takes the backend down. The child talks to the same Prefect API
  (``PREFECT_API_URL`` passed on when set) and ``$DATAEFF_HOME``.

Bursts are coalesced: at most ONE early run is pending at any time. While a local run is going,
any number of requests make one more run after it; a deployment run that has not started yet
(scheduled, pending, waiting for the project's slot) takes every request until it starts. The
loop's own project lock (:func:`flows.locks.project_slot`) keeps an early run from overlapping a
scheduled one or ``dataeff loop``.

Polling stays the source of truth: an early run is an ordinary iteration, which reconciles
everything in Label Studio with the stored cursor. A webhook lost (backend down, Label Studio's
1 s timeout) only means the change is seen at the next scheduled run; deletions cannot be
reconstructed from webhooks at all.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from dataeff.errors import DataError

log = logging.getLogger(__name__)

MODES = ("auto", "deployment", "local", "off")
"""How early runs start: ``auto`` (the deployment when it exists on a configured Prefect API, else
local), ``deployment``, ``local`` or ``off`` (requests are acknowledged and dropped)."""
EARLY_RUN_TAG = "early-run"
"""Tag of every early flow run (local ones too), so the Prefect UI tells them from scheduled runs."""
_WAITING_STATES = frozenset({"SCHEDULED", "PENDING"})
"""Prefect state types of a flow run that has not started (``AwaitingConcurrencySlot`` is ``SCHEDULED``)."""
_CHILD = (
    "import sys\n"
    "from flows.webhook import run_loop_once\n"
    "raise SystemExit(run_loop_once(sys.argv[1], sys.argv[2] or None, float(sys.argv[3])))\n"
)


def deployment_full_name(project: str) -> str:
    """``dataeff-loop/loop-<project>``: the deployment :func:`flows.serve.build_deployments` makes."""
    from flows.serve import deployment_name

    return f"dataeff-loop/{deployment_name(project)}"


def configured_api_url() -> str | None:
    """The Prefect API URL this process uses (env, profile or the test harness), ``None`` for the ephemeral API."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def run_loop_once(project: str, home: str | None = None, lock_timeout_seconds: float = 3600) -> int:
    """One loop iteration of ``project``, tagged ``early-run`` (the child process of a local early run).

    Returns the exit status: 0 done, 2 a deliberate error (printed as one ``error:`` line).
    """
    from flows.runtime_env import configure_runtime

    configure_runtime()
    from prefect import tags

    from dataeff.errors import DataEffError
    from flows.loop import loop_iteration

    try:
        with tags("dataeff", EARLY_RUN_TAG):
            summary = loop_iteration(project, home=home, lock_timeout_seconds=lock_timeout_seconds)
    except DataEffError as exc:
        print(f"error: early loop run of {project}: {exc}", file=sys.stderr)
        return 2
    decision = summary.get("decision") or {}
    print(f"early loop run of {project}: {decision.get('action')} - {decision.get('reason')}", file=sys.stderr)
    return 0


@dataclass
class EarlyRunStats:
    """What :class:`EarlyRuns` did: requests received, runs started, requests folded into a pending run."""

    requested: int = 0
    started: int = 0
    coalesced: int = 0
    failed: int = 0
    last_reason: str | None = None
    last_started_at: float | None = None
    last_how: str | None = None
    last_error: str | None = None
    last_flow_run_id: str | None = None
    running_pid: int | None = None
    pending: bool = False
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "history"} | {"history": list(self.history[-20:])}


class EarlyRuns:
    """Starts early loop runs of one project, at most one pending at a time (see the module).

    Args:
        project: the project name.
        home: ``$DATAEFF_HOME`` of the project (default: the environment's).
        mode: one of :data:`MODES`.
        lock_timeout_seconds: how long a local early run waits for the project's lock.
    """

    def __init__(
        self, project: str, home: str | None = None, mode: str = "auto", *, lock_timeout_seconds: float = 3600
    ) -> None:
        if mode not in MODES:
            raise DataError(f"early runs: mode {mode!r} is not one of {', '.join(MODES)}")
        self.project = project
        self.home = home
        self.mode = mode
        self.lock_timeout_seconds = lock_timeout_seconds
        self.stats = EarlyRunStats()
        self._cond = threading.Condition()
        self._pending = False
        self._closing = False
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    # -- the request side: never blocks
    def request(self, reason: str) -> dict:
        """Ask for an early run because of ``reason`` (e.g. the webhook action); returns at once.

        Returns ``{"status": "scheduled" | "coalesced" | "off", "mode": ...}``: ``coalesced`` when a
        run is already pending and will see the change too.
        """
        with self._cond:
            self.stats.requested += 1
            self.stats.last_reason = reason
            if self.mode == "off":
                return {"status": "off", "mode": self.mode}
            status = "coalesced" if self._pending else "scheduled"
            if self._pending:
                self.stats.coalesced += 1
            self._pending = self.stats.pending = True
            self._ensure_worker()
            self._cond.notify_all()
        return {"status": status, "mode": self.mode}

    def status(self) -> dict:
        with self._cond:
            return {"project": self.project, "mode": self.mode, **self.stats.as_dict()}

    def close(self, wait_seconds: float = 0.0) -> int | None:
        """Stop taking requests and end the worker; a local run still going is left to finish
        (waited for up to ``wait_seconds``). Returns its pid when it still runs, else ``None``."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            proc = self._proc
        if proc is not None and wait_seconds > 0:
            try:
                proc.wait(timeout=wait_seconds)
            except subprocess.TimeoutExpired:
                pass
        if self._thread is not None:
            self._thread.join(timeout=max(wait_seconds, 0.1))
        return proc.pid if proc is not None and proc.poll() is None else None

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name=f"early-runs-{self.project}", daemon=True)
            self._thread.start()

    # -- the worker side
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                reason = self.stats.last_reason or ""
            try:
                how = self._how()
                if how == "deployment":
                    self._start_deployment_run(reason)
                else:
                    self._run_local(reason)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything; the next request retries
                log.warning("%s: the early loop run could not start: %s", self.project, exc)
                with self._cond:
                    self.stats.failed += 1
                    self.stats.last_error = str(exc)[:500]
                    self._pending = self.stats.pending = False
                time.sleep(1.0)

    def _how(self) -> str:
        if self.mode in ("deployment", "local"):
            return self.mode
        if configured_api_url() is None:
            return "local"  # the ephemeral API serves no deployment: nothing could pick a run up
        return "deployment" if self._deployment_id() is not None else "local"

    def _deployment_id(self) -> Any:
        from prefect import get_client
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            try:
                return client.read_deployment_by_name(deployment_full_name(self.project)).id
            except ObjectNotFound:
                if self.mode == "deployment":
                    raise DataError(
                        f"no Prefect deployment {deployment_full_name(self.project)} on {configured_api_url()}; "
                        f"start `dataeff serve {self.project}` or use the local mode"
                    ) from None
                return None

    def _waiting(self, flow_run_id: str | None) -> bool:
        """Whether our last deployment run has not started yet (it will see every label made until it does)."""
        if not flow_run_id:
            return False
        from prefect import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
        return state is not None and str(getattr(state.type, "value", state.type)) in _WAITING_STATES

    def _start_deployment_run(self, reason: str) -> None:
        if self._waiting(self.stats.last_flow_run_id):
            with self._cond:
                self.stats.coalesced += 1
                self._pending = self.stats.pending = False
            return
        from prefect.deployments import run_deployment

        flow_run: Any = run_deployment(  # sync here: the worker thread has no event loop
            name=deployment_full_name(self.project),
            timeout=0,
            as_subflow=False,
            tags=["dataeff", EARLY_RUN_TAG],
        )
        with self._cond:
            self._pending = self.stats.pending = False
            self._record("deployment", reason, flow_run_id=str(flow_run.id))
        log.info("%s: early loop run %s created (%s)", self.project, flow_run.id, reason)

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        api = configured_api_url()
        if api and not env.get("PREFECT_API_URL"):
            env["PREFECT_API_URL"] = api
        if self.home:
            env["DATAEFF_HOME"] = str(self.home)
        return env

    def _run_local(self, reason: str) -> None:
        cmd = [sys.executable, "-c", _CHILD, self.project, self.home or "", str(self.lock_timeout_seconds)]
        with self._cond:
            if self._closing:
                return
            self._pending = self.stats.pending = False  # requests from now on make one more run after this one
        # Outside the lock (a request never waits for a fork); its own session, so a Ctrl-C of the backend
        # does not cut the iteration short.
        proc = subprocess.Popen(cmd, env=self._child_env(), stdin=subprocess.DEVNULL, start_new_session=True)
        with self._cond:
            self._proc = proc
            self.stats.running_pid = proc.pid
            self._record("local", reason)
        log.info("%s: early loop run started (pid %d; %s)", self.project, proc.pid, reason)
        code = proc.wait()
        with self._cond:
            self.stats.running_pid = None
            self._proc = None
            self.stats.history[-1]["exit_code"] = code
            if code != 0:
                self.stats.failed += 1
                self.stats.last_error = f"early loop run exited with status {code} (see the backend's log)"
        log.info("%s: early loop run finished (exit status %d)", self.project, code)

    def _record(self, how: str, reason: str, **extra: Any) -> None:
        self.stats.started += 1
        self.stats.last_started_at = time.time()
        self.stats.last_how = how
        if "flow_run_id" in extra:
            self.stats.last_flow_run_id = extra["flow_run_id"]
        entry: dict[str, Any] = {"how": how, "reason": reason, "at": self.stats.last_started_at, **extra}
        if self._proc is not None and how == "local":
            entry["pid"] = self._proc.pid
        self.stats.history.append(entry)


def describe(status: Mapping[str, Any]) -> str:
    """One line for logs: how many early runs were asked for, started and coalesced."""
    return (
        f"early runs of {status.get('project')} ({status.get('mode')}): {status.get('requested', 0)} requested, "
        f"{status.get('started', 0)} started, {status.get('coalesced', 0)} coalesced, {status.get('failed', 0)} failed"
    )


__all__ = [
    "EARLY_RUN_TAG",
    "MODES",
    "EarlyRunStats",
    "EarlyRuns",
    "configured_api_url",
    "deployment_full_name",
    "describe",
    "run_loop_once",
]
