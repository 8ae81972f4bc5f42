"""Where the heavy, independent units of work run: this process (the default) or a Ray cluster.

A *unit* is a module-level function ``fn(loaded, *args)`` whose first argument is the loaded model
(fine-tune at one budget and seed, CoS-Low of one draw set, confidence over one shard of a pool).
The driver submits units and takes their results back in the order it logs them, so MLflow is
written by the driver only: a unit that dies on a worker is re-run by the runner and never leaves
a half-logged run.

- :class:`LocalRunner` (``--runner local``, the default): runs a unit lazily, in this process, when
  its result is asked for; exactly the behaviour before runners existed. Needs no Ray.
- ``RayRunner`` (:mod:`flows.ray_runner`, ``--runner ray``, extra ``dataeff[ray]``): one Ray task
  per unit, ``num_gpus=1`` when the cluster has GPUs (else one CPU), retried when its worker
  process dies; each worker loads the model once and keeps it.

A new runner is a new module with the same three members (``name``, ``parallel``, ``workers``,
``submit``, ``close``) plus an entry in :func:`make_runner`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dataeff.confidence import ConfidenceScore, ConfidenceScores, score_confidence
from dataeff.data import Example
from dataeff.generation import length_batches
from dataeff.models import LoadedModel, load_model

RUNNERS = ("local", "ray")


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model of a unit (:func:`dataeff.models.load_model` arguments)."""

    model: str
    device: str | None = None
    dtype: str | None = None


@dataclass
class UnitInfo:
    """Where and when a unit ran (for progress events and tests; never logged to MLflow)."""

    pid: int = 0
    host: str = ""
    started: float = 0.0
    ended: float = 0.0
    runner: str = "local"


class Pending(Protocol):
    info: UnitInfo

    def result(self) -> Any: ...


class Runner(Protocol):
    name: str
    parallel: bool
    workers: int

    def submit(self, fn: Callable[..., Any], spec: ModelSpec, *args: Any) -> Pending: ...

    def close(self) -> None: ...


@dataclass
class _Lazy:
    call: Callable[[], Any]
    info: UnitInfo = field(default_factory=UnitInfo)
    _done: bool = False
    _value: Any = None

    def result(self) -> Any:
        if not self._done:
            self.info.pid, self.info.host, self.info.started = os.getpid(), os.uname().nodename, time.time()
            self._value = self.call()
            self.info.ended, self._done = time.time(), True
        return self._value


class LocalRunner:
    """Runs every unit in this process, when its result is first asked for (no parallelism).

    Args:
        load: the loaded model of a :class:`ModelSpec` (default: :func:`dataeff.models.load_model`, once per spec).
    """

    name = "local"
    parallel = False
    workers = 1

    def __init__(self, load: Callable[[ModelSpec], LoadedModel] | None = None) -> None:
        self._load = load
        self._models: dict[ModelSpec, LoadedModel] = {}

    def model(self, spec: ModelSpec) -> LoadedModel:
        if self._load is not None:
            return self._load(spec)
        if spec not in self._models:
            self._models[spec] = load_model(spec.model, device=spec.device, dtype=spec.dtype)
        return self._models[spec]

    def submit(self, fn: Callable[..., Any], spec: ModelSpec, *args: Any) -> Pending:
        return _Lazy(lambda: fn(self.model(spec), *args))

    def close(self) -> None:
        self._models.clear()


def make_runner(
    name: str = "local", *, address: str | None = None, load: Callable[[ModelSpec], LoadedModel] | None = None
) -> Runner:
    """The runner called ``name`` (:data:`RUNNERS`).

    Args:
        name: ``"local"`` or ``"ray"``.
        address: Ray only: ``None`` starts a Ray on this machine, ``"auto"`` joins the cluster of
            ``ray start`` here, ``"ray://host:10001"`` a remote cluster (Ray client).
        load: local only: how the model of a spec is loaded (e.g. an already loaded model).

    Raises:
        ValueError: an unknown runner name, or ``ray`` without Ray installed (says which extra).
    """
    if name == "local":
        return LocalRunner(load)
    if name == "ray":
        try:
            from flows.ray_runner import RayRunner
        except ImportError as exc:
            raise ValueError(f"--runner ray needs Ray: pip install 'dataeff[ray]' ({exc})") from None
        return RayRunner(address)
    raise ValueError(f"unknown runner {name!r}: choose one of {', '.join(RUNNERS)}")


# --------------------------------------------------------------------------- pool scoring, sharded


def confidence_unit(loaded: LoadedModel, examples: list[Example], options: dict) -> ConfidenceScores:
    """A unit: :func:`dataeff.confidence.score_confidence` of one shard (``options`` its keyword arguments)."""
    return score_confidence(loaded, examples=examples, progress=False, **options)


def shard_pool(examples: Sequence[Example], shards: int, batch_size: int, lengths: Sequence[int]) -> list[list[int]]:
    """Indices of ``examples`` in ``shards`` groups of whole length batches.

    The pool is ordered as :func:`dataeff.generation.length_batches` orders it (longest first) and
    cut between batches, each group keeping input order; so every shard decodes the same batches
    the unsharded pool would.
    """
    batches = length_batches(list(lengths), batch_size)
    shards = max(1, min(shards, len(batches)))
    per = -(-len(batches) // shards)
    groups = [sorted(i for b in batches[s : s + per] for i in b) for s in range(0, len(batches), per)]
    return [g for g in groups if g]


class ShardedScores:
    """Confidence of a pool being scored in shards: :meth:`result` merges them in input order."""

    def __init__(self, groups: list[list[int]], jobs: list[Pending], n: int) -> None:
        self.groups, self.jobs, self.n = groups, jobs, n

    @property
    def seconds(self) -> float:
        """Compute time of the shards (summed; waiting in a queue not counted), once :meth:`result` returned."""
        return sum(max(0.0, j.info.ended - j.info.started) for j in self.jobs)

    def result(self) -> ConfidenceScores:
        slots: list[ConfidenceScore | None] = [None] * self.n
        merged = ConfidenceScores()
        for group, job in zip(self.groups, self.jobs):
            part = job.result()
            merged.batch_size = merged.batch_size or part.batch_size
            merged.decoder = merged.decoder or part.decoder
            for i, score in zip(group, part):
                slots[i] = score
        merged.extend(s for s in slots if s is not None)
        if len(merged) != self.n:
            raise RuntimeError(f"sharded scoring returned {len(merged)} scores for {self.n} examples")
        return merged

    def cancel(self) -> None:
        for job in self.jobs:
            cancel = getattr(job, "cancel", None)
            if cancel is not None:
                cancel()


def submit_pool_scoring(
    runner: Runner,
    spec: ModelSpec,
    examples: Sequence[Example],
    *,
    lengths: Sequence[int] | None = None,
    shards: int | None = None,
    **options: Any,
) -> ShardedScores:
    """Submit the confidence over ``examples``: one unit on a local runner, else the pool cut into ``shards``
    (default: the runner's workers) groups of whole batches (:func:`shard_pool`) scored in parallel.

    Args:
        runner: where the units run.
        spec: the model.
        examples: the pool.
        lengths: prompt lengths (tokens) that order the batches; ``None``: characters of the prompt.
        shards: number of shards (default: ``runner.workers``).
        options: keyword arguments of :func:`dataeff.confidence.score_confidence` (``batch_size``,
            ``max_new_tokens``, ``chat_template``, ``stop_strings``). ``batch_size=None`` is 16 for cutting.
    """
    examples = list(examples)
    n_shards = shards if shards is not None else runner.workers
    if not runner.parallel or n_shards <= 1 or len(examples) <= 1:
        groups = [list(range(len(examples)))]
    else:
        sizes = list(lengths) if lengths is not None else [len(e.prompt) for e in examples]
        groups = shard_pool(examples, n_shards, int(options.get("batch_size") or 16), sizes)
    jobs = [runner.submit(confidence_unit, spec, [examples[i] for i in g], options) for g in groups]
    return ShardedScores(groups, jobs, len(examples))


def score_pool_sharded(runner: Runner, spec: ModelSpec, examples: Sequence[Example], **kwargs: Any) -> ConfidenceScores:
    """:func:`submit_pool_scoring` and wait: the scores in input order, equal to unsharded scoring."""
    return submit_pool_scoring(runner, spec, examples, **kwargs).result()
