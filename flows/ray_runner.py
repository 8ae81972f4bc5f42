"""``--runner ray``: the units of :mod:`flows.runners` as Ray tasks (extra ``dataeff[ray]``).

Plain ``ray.remote`` rather than prefect-ray's ``RayTaskRunner``: the study is a plain function
(no Prefect API, it runs on any box with an MLflow client) and its units are not Prefect tasks, so
there is no flow run for a task runner to belong to; what the units need from the engine (a GPU or
a CPU per task, re-running a task whose worker process died, one model per worker process) is
Ray's own ``.options(num_gpus=..., max_retries=...)`` and a worker-level cache.

What runs where: the driver (``dataeff study`` / ``bootstrap``) prepares the tasks, computes the
run keys, submits every unit not yet in MLflow, and logs each result to MLflow in the local
runner's order; Ray workers only load the model and compute. A worker that dies mid-unit is
re-run by Ray (``max_retries``); the driver logs nothing until a unit's result is back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from dataeff.models import LoadedModel, load_model
from flows.runners import ModelSpec, UnitInfo

#: Ray re-runs a unit whose worker process died this many times (an exception in the unit is not retried:
#: it is a result, reported like the local runner reports it).
MAX_RETRIES = 3

_MODELS: dict[ModelSpec, LoadedModel] = {}


def _worker_model(spec: ModelSpec) -> LoadedModel:
    """The model of ``spec``, loaded once per worker process."""
    if spec not in _MODELS:
        _MODELS[spec] = load_model(spec.model, device=spec.device, dtype=spec.dtype)
    return _MODELS[spec]


def _run_unit(fn: Callable[..., Any], spec: ModelSpec, *args: Any) -> dict:
    """Body of every Ray task: ``fn(model, *args)`` with where/when it ran; an exception travels back as text."""
    started = time.time()
    out: dict[str, Any] = {"pid": os.getpid(), "host": os.uname().nodename, "started": started}
    try:
        out["value"] = fn(_worker_model(spec), *args)
    except Exception as exc:  # noqa: BLE001 - the driver raises it again under the same name
        out["error"] = (type(exc).__name__, str(exc))
    out["ended"] = time.time()
    return out


class UnitError(RuntimeError):
    """An exception raised by a unit on a worker (re-raised in the driver under the unit's exception name)."""


def _raise_remote(name: str, message: str) -> None:
    raise type(name, (UnitError,), {})(message)


class _RayPending:
    def __init__(self, ref) -> None:
        self.ref = ref
        self.info = UnitInfo(runner="ray")
        self._out: dict | None = None

    def result(self) -> Any:
        if self._out is None:
            self._out = ray.get(self.ref)
            out = self._out
            self.info = UnitInfo(
                pid=out["pid"], host=out["host"], started=out["started"], ended=out["ended"], runner="ray"
            )
        if "error" in self._out:
            _raise_remote(*self._out["error"])
        return self._out["value"]

    def cancel(self) -> None:
        """Stop the unit if it has not been taken (an interrupted driver)."""
        if self._out is None:
            try:
                ray.cancel(self.ref, force=True)
            except Exception:  # noqa: BLE001 - finished or already gone: nothing to stop
                pass


def _code_root() -> str:
    """The folder holding this checkout's packages (``flows/``, ``dataeff/``): workers of a Ray started here import them."""
    return str(Path(__file__).resolve().parents[1])


class RayRunner:
    """Units as Ray tasks.

    Args:
        address: ``None``: the cluster of ``$RAY_ADDRESS`` if set, else start a Ray on this machine
            (stopped by :meth:`close`); ``"auto"``: the
            cluster of ``ray start --head`` on this machine; ``"ray://host:10001"``: a remote cluster.
            An already initialised Ray (e.g. a test's ``ray.init``) is used as it is.
        max_retries: re-runs of a unit whose worker died.
        num_cpus: CPUs of a Ray started here (``None``: all).
    """

    name = "ray"
    parallel = True

    def __init__(self, address: str | None = None, *, max_retries: int = MAX_RETRIES, num_cpus: int | None = None):
        self._owns = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False}
            if address is None and not os.environ.get("RAY_ADDRESS"):  # a Ray started here: it imports this checkout
                kwargs["num_cpus"] = num_cpus
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": _code_root()}}
            ray.init(**kwargs)
            self._owns = True
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        # one GPU per unit when the cluster has GPUs (a fine-tune fills one); else one CPU
        self.options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1} if gpus >= 1 else {"num_gpus": 0, "num_cpus": 1}
        self.workers = max(1, int(gpus) if gpus >= 1 else int(resources.get("CPU", 1)))
        self.max_retries = max_retries
        self._remote = ray.remote(_run_unit)

    def submit(self, fn: Callable[..., Any], spec: ModelSpec, *args: Any) -> _RayPending:
        ref = self._remote.options(**self.options, max_retries=self.max_retries, retry_exceptions=False).remote(
            fn, spec, *args
        )
        return _RayPending(ref)

    def close(self) -> None:
        if self._owns and ray.is_initialized():
            ray.shutdown()
        self._owns = False
