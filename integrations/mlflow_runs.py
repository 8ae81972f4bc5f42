"""Keyed, idempotent MLflow runs: the generic machinery under :mod:`integrations.mlflow_tracking`.

A run is identified by a key, the sha256 of its inputs (:func:`run_key`), stored as the tag
``dataeff.run_key``. :meth:`RunStore.log_run` first looks for a FINISHED run with that key and
returns it (``LoggedRun.created is False``) without writing anything. A run with that key left
RUNNING by a process that died mid-way is not taken as done: it is marked FAILED (tag
``dataeff.abandoned_by`` = the new run's id) and a new run is written. FAILED/KILLED runs are
ignored. This assumes one writer per experiment at a time; two writers racing on the same key may
both write a run.

Every param, tag, metric name, run name and JSON/text artifact passes through
:func:`integrations.secrets.redact`. This module knows nothing of dataeff's run kinds (they are
:mod:`integrations.mlflow_schema`); it takes an ``MlflowClient`` bound to an explicit tracking URI.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import requests
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from dataeff.errors import DataEffError, DataError
from integrations.secrets import RedactingFilter, redact, redact_text

logger = logging.getLogger(__name__)
logger.addFilter(RedactingFilter())

TAG_RUN_KEY = "dataeff.run_key"
TAG_ABANDONED_BY = "dataeff.abandoned_by"
TAG_HOST = "dataeff.host"
TAG_PID = "dataeff.pid"
TAG_PARENT = "mlflow.parentRunId"  # MLflow nests a run under this one in the run list
TAG_DATASET_CONTEXT = "mlflow.data.context"  # MLflow's dataset-input tag: training / eval / ...

_UNFINISHED = ("RUNNING", "SCHEDULED")
NO_VALUES: Mapping[str, Any] = MappingProxyType({})
"""Default of optional tags/params/metrics arguments: an empty, read-only mapping."""


class TrackingError(DataEffError):
    """MLflow could not be reached or refused a request. The message carries no secret."""


@dataclasses.dataclass(frozen=True)
class LoggedRun:
    """Result of a keyed ``log_*`` call.

    Attributes:
        run_id: the MLflow run id.
        run_key: the idempotency key (sha256 hex of the key fields).
        created: ``True`` when this call wrote the run, ``False`` when a FINISHED run with the same
            key already existed and was returned unchanged.
    """

    run_id: str
    run_key: str
    created: bool


@dataclasses.dataclass(frozen=True)
class DatasetRef:
    """One dataset a run used, logged as an MLflow dataset input (the run's "Datasets used").

    Attributes:
        name: shown in MLflow (e.g. ``"intents-train"``).
        digest: identifies the exact rows, e.g. dataeff's label-set hash (MLflow shows it beside the name).
        context: MLflow's ``mlflow.data.context`` tag (``training``, ``eval``, ``low-confidence``).
        rows: number of rows (the dataset's profile).
        source: where the rows live, e.g. the Label Studio project's URL (never a token).
    """

    name: str
    digest: str
    context: str
    rows: int
    source: str = ""


# ----------------------------------------------------------------------------- pure helpers


def run_key(**fields: Any) -> str:
    """sha256 hex digest of the key fields (JSON, keys sorted; ``None`` values kept)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def json_ready(obj: Any) -> Any:
    """Convert dataclasses, tuples, numpy scalars/arrays and Paths into JSON-friendly values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_ready(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return json_ready(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def finite(value: Any) -> float | None:
    """``value`` as a float, ``None`` when it is not a number or NaN (infinities are kept)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def table_columns(table: Sequence[Mapping] | Mapping[str, Sequence], name: str = "table") -> dict[str, list]:
    """Rows (list of dicts) or columns (dict of lists) -> columns, JSON-friendly.

    Raises:
        DataError: naming ``name`` when ``table`` is neither.
    """
    try:
        if isinstance(table, Mapping):
            return {str(k): json_ready(list(v)) for k, v in table.items()}
        rows = [dict(r) for r in table]
    except (TypeError, ValueError):
        raise DataError(
            f"table {name!r}: expected a list of row dicts or a dict of columns, got {type(table).__name__}"
        ) from None
    return {c: json_ready([row.get(c) for row in rows]) for c in _columns(rows)}


def csv_text(rows: Sequence[Mapping]) -> str:
    """CSV of ``rows`` (columns = union of keys, in first-seen order; missing cells empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(json_ready(rows))
    return buffer.getvalue()


def _columns(rows: Sequence[Mapping]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns


def safe_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9_.-]`` replaced by ``_`` (metric/artifact names)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        value = ",".join(str(v) for v in value)
    return redact_text(str(value))[:MAX_PARAM_VAL_LENGTH]


def _tag_values(tags: Mapping[str, Any]) -> dict[str, str]:
    """Redacted, length-capped tag values; ``None`` values left out."""
    return {k: redact_text(str(v))[:MAX_TAG_VAL_LENGTH] for k, v in tags.items() if v is not None}


_TEXT_SUFFIXES = {".json", ".txt", ".md", ".yaml", ".yml", ".cfg", ".ini", ".csv", ".jinja"}


def redact_text_files(folder: Path) -> None:
    """Redact secrets inside the text files (by suffix) of ``folder``, in place."""
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix.lower() in _TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8", errors="replace")
            clean = redact_text(text)
            if path.suffix.lower() == ".json":
                try:
                    clean = json.dumps(redact(json.loads(text)), indent=2, ensure_ascii=False)
                except json.JSONDecodeError:
                    pass
            if clean != text:
                path.write_text(clean, encoding="utf-8")


# ----------------------------------------------------------------------------- error guard


class _HasDisplayUri(Protocol):
    display_uri: str


_F = TypeVar("_F", bound=Callable[..., Any])


def guarded(method: _F) -> _F:
    """Re-raise MLflow/network failures of a method as TrackingError with the URI and every secret redacted.

    The method's object names its redacted tracking URI as ``display_uri``.
    """

    @functools.wraps(method)
    def wrapper(self: _HasDisplayUri, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (MlflowException, requests.exceptions.RequestException, OSError) as exc:
            message = redact_text(f"MLflow at {self.display_uri}: {method.__name__} failed: {exc}")
            raise TrackingError(
                message[:2000] + "; check that the tracking server is up and the URI is right"
            ) from None

    return wrapper  # type: ignore[return-value]


# ----------------------------------------------------------------------------- the store


class RunStore:
    """Experiments and keyed runs of one MLflow tracking server.

    Args:
        client: an ``MlflowClient`` bound to the tracking URI.
        display_uri: the URI with its password redacted (for messages).
        artifact_root: root of the artifact locations of experiments this store creates (each
            gets ``<root>/<slug>-<hash8>``), ``None`` for the server's default.
    """

    def __init__(self, client: MlflowClient, display_uri: str, artifact_root: str | None) -> None:
        self.client = client
        self.display_uri = display_uri
        self.artifact_root = artifact_root
        self._experiment_ids: dict[str, str] = {}

    # ------------------------------------------------------------------ experiments

    def experiment(self, name: str, tags: Mapping[str, str], ensure_tags: Mapping[str, str] = NO_VALUES) -> str:
        """Id of the experiment ``name``, created with ``tags`` and ``ensure_tags`` if it does not exist.

        ``ensure_tags`` are also added to an existing experiment that lacks them (a value already
        set, e.g. chosen by someone in the UI, is left as it is).

        Raises:
            DataError: empty name. TrackingError: the experiment exists but is deleted.
        """
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"project name {name!r}: give a non-empty name")
        exp_id = self._experiment_ids.get(name)
        if exp_id is not None:
            return exp_id
        exp = self.client.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"experiment {name!r} is deleted in MLflow at {self.display_uri}; restore it "
                "(mlflow experiments restore) or remove it for good (mlflow gc) before reusing the name"
            )
        if exp is None:
            location = None
            if self.artifact_root is not None:
                location = (
                    f"{self.artifact_root}/{safe_name(name)[:60]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
                )
            try:
                exp_id = self.client.create_experiment(
                    name, artifact_location=location, tags=redact({**ensure_tags, **tags})
                )
                logger.info("created MLflow experiment %r (id %s) at %s", name, exp_id, self.display_uri)
            except MlflowException:  # created meanwhile by another process
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
            for key, value in ensure_tags.items():
                if key not in exp.tags:
                    self.client.set_experiment_tag(exp_id, key, redact_text(str(value))[:MAX_TAG_VAL_LENGTH])
        self._experiment_ids[name] = exp_id
        return exp_id

    def existing_experiment(self, name: str) -> str | None:
        """Id of the active experiment ``name``, or ``None`` (never creates one)."""
        if name in self._experiment_ids:
            return self._experiment_ids[name]
        exp = self.client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage == "deleted":
            return None
        self._experiment_ids[name] = exp.experiment_id
        return exp.experiment_id

    def add_to_list_tag(self, experiment_id: str, tag: str, value: str) -> None:
        """Add ``value`` to the experiment's comma-separated, sorted list tag ``tag`` (if not there yet)."""
        exp = self.client.get_experiment(experiment_id)
        values = set(filter(None, exp.tags.get(tag, "").split(",")))
        if value not in values:
            text = ",".join(sorted(values | {value}))
            self.client.set_experiment_tag(experiment_id, tag, redact_text(text)[:MAX_TAG_VAL_LENGTH])

    # ------------------------------------------------------------------ runs

    def search(self, experiment_id: str, filter_string: str = "", *, view: int = ViewType.ACTIVE_ONLY) -> list[Run]:
        """All runs matching ``filter_string``, newest first (every page)."""
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id],
                filter_string,
                run_view_type=view,
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def keyed(self, experiment_id: str, key: str) -> list[Run]:
        """Active runs with ``dataeff.run_key`` = ``key``, newest first."""
        return self.search(experiment_id, f"tags.`{TAG_RUN_KEY}` = '{key}'")

    def create(self, experiment_id: str, run_name: str, tags: Mapping[str, Any], start_time: int | None = None) -> str:
        """A new RUNNING run with ``tags`` (redacted; ``None`` values left out); returns its id.

        ``start_time``: epoch milliseconds (default: now).
        """
        run = self.client.create_run(
            experiment_id, start_time=start_time, tags=_tag_values(tags), run_name=redact_text(run_name)
        )
        return run.info.run_id

    def terminate(self, run_id: str, status: str, end_time: int | None = None) -> None:
        """End a run with ``status`` (``FINISHED``, ``FAILED``, ``KILLED``) at ``end_time`` (epoch ms; default now)."""
        # MlflowClient.set_terminated prints "View run ... at: <tracking uri>" for http stores; the URI
        # may carry a password, so the print is captured and re-emitted redacted.
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            self.client.set_terminated(run_id, status, end_time=end_time)
        if buffer.getvalue():
            sys.stdout.write(redact_text(buffer.getvalue()))

    def log_values(
        self, run_id: str, params: Mapping[str, Any] = NO_VALUES, metrics: Mapping[str, Any] = NO_VALUES
    ) -> None:
        """Log params (``None`` left out) and metrics (non-numbers and NaN left out), names redacted."""
        now = int(time.time() * 1000)
        metric_list = [
            Metric(redact_text(str(k)), x, now, 0) for k, v in metrics.items() if (x := finite(v)) is not None
        ]
        param_list = [Param(redact_text(str(k)), _param_value(v)) for k, v in params.items() if v is not None]
        # MLflow takes at most 100 params / 1000 metrics per batch.
        for i in range(0, max(len(param_list), len(metric_list)), 100):
            self.client.log_batch(run_id, metrics=metric_list[i : i + 100], params=param_list[i : i + 100])

    def add_metrics(self, run_id: str, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Add metrics (step 0) to an existing run, finished or not, unless the run has them already.

        Idempotent: a metric the run already holds is left as it is (the first value written stays).
        Non-numbers and NaN are left out. Returns the metrics written now.
        """
        have = self.client.get_run(run_id).data.metrics
        new = {str(k): v for k, v in metrics.items() if str(k) not in have and finite(v) is not None}
        if new:
            self.log_values(run_id, metrics=new)
        return {k: float(v) for k, v in new.items()}

    def log_step_metrics(self, run_id: str, series: Mapping[str, Mapping[int, Any]]) -> int:
        """Log ``{metric: {step: value}}`` on a run, each step once: idempotent.

        A step whose newest logged value equals ``value`` is skipped; a new step, or a step whose
        value changed (e.g. a budget re-measured on new labels), gets a new entry (MLflow keeps the
        history; the newest entry at a step is the current one). Non-numbers and NaN are left out.
        Returns how many values were written.
        """
        now = int(time.time() * 1000)
        metrics: list[Metric] = []
        for name, points in series.items():
            key = redact_text(str(name))
            newest: dict[int, float] = {}
            for m in sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
                newest[int(m.step)] = float(m.value)
            for step, value in sorted(points.items()):
                x = finite(value)
                if x is None or (int(step) in newest and math.isclose(newest[int(step)], x, rel_tol=1e-12)):
                    continue
                metrics.append(Metric(key, x, now, int(step)))
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        return len(metrics)

    def log_timed_metrics(self, run_id: str, samples: Sequence[tuple[str, float, int, int]]) -> int:
        """Log ``(name, value, timestamp_ms, step)`` samples with their own timestamps (e.g. system
        metrics sampled while the run's work ran); non-numbers and NaN left out. Returns the count."""
        metrics = [
            Metric(redact_text(str(name)), x, int(ts), int(step))
            for name, value, ts, step in samples
            if (x := finite(value)) is not None
        ]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        return len(metrics)

    def log_datasets(self, run_id: str, datasets: Sequence[DatasetRef]) -> None:
        """Log dataset inputs (``mlflow.data``): name, digest, rows and source, tagged with their context."""
        inputs = [
            DatasetInput(
                Dataset(
                    name=redact_text(d.name),
                    digest=d.digest[:36],
                    source_type="http" if d.source.startswith("http") else "code",
                    source=json.dumps({"url": redact_text(d.source)} if d.source else {}),
                    profile=json.dumps({"num_rows": int(d.rows)}),
                ),
                tags=[InputTag(TAG_DATASET_CONTEXT, d.context)],
            )
            for d in datasets
        ]
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set tags on an existing run (redacted, length-capped)."""
        for k, v in tags.items():
            self.client.set_tag(run_id, k, redact_text(str(v))[:MAX_TAG_VAL_LENGTH])

    def log_run(
        self,
        experiment_id: str,
        *,
        key: str,
        run_name: str,
        tags: Mapping[str, Any],
        params: Mapping[str, Any] = NO_VALUES,
        metrics: Mapping[str, Any] = NO_VALUES,
        artifacts: Callable[[str], None] | None = None,
        start_time: int | None = None,
        end_time: int | None = None,
        parent: Callable[[], str | None] | None = None,
    ) -> LoggedRun:
        """Write a FINISHED run keyed by ``key`` unless one exists (see the module docstring).

        ``artifacts(run_id)`` writes the run's files; any exception on the way marks the run FAILED
        and is re-raised. Tags ``dataeff.run_key``, ``dataeff.host`` and ``dataeff.pid`` are added.
        ``start_time``/``end_time`` (epoch ms) date a run written after the work it records, so
        that MLflow shows the work's real duration (defaults: when the run is created / finished;
        a FAILED run ends when it failed). ``parent()`` is called only when a run is written and
        gives the run to nest it under (tag ``mlflow.parentRunId``; ``None``: not nested), so a
        parent that exists only for its children is created only when a child is.
        """
        existing = self.keyed(experiment_id, key)
        finished = [r for r in existing if r.info.status == "FINISHED"]
        if finished:
            logger.info("run %s (%s) already logged: %s", run_name, key[:12], finished[0].info.run_id)
            return LoggedRun(finished[0].info.run_id, key, created=False)
        parent_id = parent() if parent is not None else None
        run_tags = {**tags, TAG_PARENT: parent_id} if parent_id else tags
        run_id = self.create(experiment_id, run_name, self._writer_tags(run_tags, key), start_time=start_time)
        for old in (r for r in existing if r.info.status in _UNFINISHED):  # left by a process that died
            self.client.set_tag(old.info.run_id, TAG_ABANDONED_BY, run_id)
            self.terminate(old.info.run_id, "FAILED")
            logger.warning("run %s was left unfinished; marked FAILED, replaced by %s", old.info.run_id, run_id)
        try:
            self.log_values(run_id, params, metrics)
            if artifacts is not None:
                artifacts(run_id)
        except BaseException:
            self.terminate(run_id, "FAILED")
            raise
        self.terminate(run_id, "FINISHED", end_time=end_time)
        logger.info("logged %s run %s in experiment %s", run_name, run_id, experiment_id)
        return LoggedRun(run_id, key, created=True)

    def start(
        self,
        experiment_id: str,
        *,
        key: str,
        run_name: str,
        tags: Mapping[str, Any],
        params: Mapping[str, Any] = NO_VALUES,
    ) -> tuple[str, str]:
        """A long-lived keyed run left RUNNING for the caller to end: ``(run_id, state)``.

        ``state`` is ``"finished"`` (a FINISHED run with this key exists: nothing to do),
        ``"resumed"`` (the newest unfinished one - interrupted or failed - is set RUNNING again and
        reused) or ``"created"``.
        """
        runs = self.keyed(experiment_id, key)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished:
            return finished[0].info.run_id, "finished"
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id, "resumed"
        run_id = self.create(experiment_id, run_name, self._writer_tags(tags, key))
        self.log_values(run_id, params)
        return run_id, "created"

    def log_failed(
        self,
        experiment_id: str,
        *,
        key: str,
        run_name: str,
        tags: Mapping[str, Any],
        params: Mapping[str, Any] = NO_VALUES,
    ) -> str:
        """Record an attempt that raised as a FAILED run keyed by ``key`` (ignored by :meth:`log_run`)."""
        run_id = self.create(experiment_id, run_name, {TAG_RUN_KEY: key, **tags})
        self.log_values(run_id, params)
        self.terminate(run_id, "FAILED")
        return run_id

    @staticmethod
    def _writer_tags(tags: Mapping[str, Any], key: str) -> dict[str, Any]:
        return {**tags, TAG_RUN_KEY: key, TAG_HOST: socket.gethostname(), TAG_PID: os.getpid()}

    # ------------------------------------------------------------------ artifacts

    def log_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        """Store ``data`` (JSON-friendly, redacted) as the artifact ``artifact_file``."""
        self.client.log_dict(run_id, redact(json_ready(data)), artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Store ``text`` (redacted) as the artifact ``artifact_file``."""
        self.client.log_text(run_id, redact_text(text), artifact_file)

    def log_table(
        self, run_id: str, table: Sequence[Mapping] | Mapping[str, Sequence], artifact_file: str, name: str
    ) -> None:
        """Store rows or columns (redacted) as the MLflow table artifact ``artifact_file``; ``name`` for errors."""
        self.client.log_table(run_id, redact(table_columns(table, name)), artifact_file)

    def read_json(self, run_id: str, artifact_file: str) -> Any | None:
        """A JSON artifact of a run, or ``None`` when the run has no such file."""
        parent = str(Path(artifact_file).parent)
        names = {f.path for f in self.client.list_artifacts(run_id, None if parent == "." else parent)}
        if artifact_file not in names:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(run_id, artifact_file, tmp)
            return json.loads(Path(local).read_text(encoding="utf-8"))
