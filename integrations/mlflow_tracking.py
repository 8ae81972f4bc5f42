"""MLflow tracking for dataeff: the run schema, idempotent logging and reading results back.

One MLflow experiment per annotation project (named after the project); one experiment
``dataeff-calibrations`` for calibrations of model families. Every run carries the tag
``dataeff.kind`` in ``{bootstrap, estimate, finetune, decision, calibration, summary}`` and the key tags
``dataeff.project``, ``dataeff.model``, ``dataeff.label_hash``, ``dataeff.budget``; the tag
``dataeff.run_key`` is the sha256 of those key fields. The full schema is in docs/mlflow-schema.md.

Idempotency: every ``log_*`` first looks for a FINISHED run with the same ``dataeff.run_key``
and returns it (``LoggedRun.created is False``) without writing anything. A run with that key
left RUNNING by a process that died mid-way is not taken as done: it is marked FAILED (tag
``dataeff.abandoned_by`` = the new run's id) and a new run is written. FAILED/KILLED runs are
ignored. This assumes one writer per project at a time (the Prefect loop holds a per-project
concurrency slot); two writers racing on the same key may both write a run.

Per project, one ``summary`` run holds the state that is overwritten in place:
``state/cursor.json`` (the Label Studio pull cursor) and ``comparison/`` (predicted vs actual
curve figure and table).

Every param, tag, metric name, JSON/text artifact and log line passes through
:func:`integrations.secrets.redact`; the password of the tracking URI is registered as a secret
and only the redacted URI is ever shown.

Only this module talks to MLflow; it uses an ``mlflow.MlflowClient`` bound to an explicit tracking
URI, never the global ``mlflow.set_tracking_uri`` state.
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
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, overload
from urllib.parse import unquote, urlparse

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from dataeff.errors import DataEffError, DataError
from integrations.secrets import RedactingFilter, redact, redact_text, register_secret, uri_password

logger = logging.getLogger(__name__)
logger.addFilter(RedactingFilter())

KINDS = ("bootstrap", "estimate", "finetune", "decision", "calibration", "summary")
CALIBRATION_EXPERIMENT = "dataeff-calibrations"

TAG_KIND = "dataeff.kind"
TAG_PROJECT = "dataeff.project"
TAG_MODEL = "dataeff.model"
TAG_LABEL_HASH = "dataeff.label_hash"
TAG_BUDGET = "dataeff.budget"
TAG_RUN_KEY = "dataeff.run_key"
TAG_FAMILY = "dataeff.family"
TAG_ITERATION = "dataeff.iteration"
TAG_ACTION = "dataeff.action"
TAG_REASON = "dataeff.reason"
TAG_ABANDONED_BY = "dataeff.abandoned_by"
TAG_NOTE = "mlflow.note.content"  # shown as the run's description in the MLflow UI

BOOTSTRAP_ROLES = "roles.json"
BOOTSTRAP_SCORES = "confidence.csv"
ESTIMATE_JSON = "estimate.json"
FINETUNE_JSON = "finetune.json"
DECISION_JSON = "decision.json"
CALIBRATION_JSON = "calibration.json"
CURSOR_ARTIFACT = "state/cursor.json"
COMPARISON_FIGURE = "comparison/curve.png"
COMPARISON_TABLE_CSV = "comparison/table.csv"
COMPARISON_TABLE_JSON = "comparison/table.json"

_UNFINISHED = ("RUNNING", "SCHEDULED")
_NO_VALUES: Mapping[str, Any] = MappingProxyType({})
"""Default of optional tags/params/metrics arguments: an empty, read-only mapping."""


class TrackingError(DataEffError):
    """MLflow could not be reached or refused a request. The message carries no secret."""


@dataclasses.dataclass(frozen=True)
class LoggedRun:
    """Result of a ``log_*`` call.

    Attributes:
        run_id: the MLflow run id.
        run_key: the idempotency key (sha256 hex of the key fields).
        created: ``True`` when this call wrote the run, ``False`` when a FINISHED run with the same
            key already existed and was returned unchanged.
    """

    run_id: str
    run_key: str
    created: bool


# ----------------------------------------------------------------------------- pure helpers


def run_key(**fields: Any) -> str:
    """sha256 hex digest of the key fields (JSON, keys sorted; ``None`` values kept)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _as_dict(obj: Any) -> dict:
    """A plain dict from a mapping, a dataclass or an object with ``as_dict()``; ``None`` -> ``{}``."""
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "as_dict"):
        return dict(obj.as_dict())
    raise DataError(f"expected a dict or a dataclass, got {type(obj).__name__}")


def _jsonable(obj: Any) -> Any:
    """Convert dataclasses, tuples, numpy scalars/arrays and Paths into JSON-friendly values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        value = ",".join(str(v) for v in value)
    text = redact_text(str(value))
    return text[:MAX_PARAM_VAL_LENGTH]


def _first(mapping: Mapping, *names: str, default: Any = None) -> Any:
    for name in names:
        if name in mapping and mapping[name] is not None:
            return mapping[name]
    return default


def _target_label(target: Any) -> str:
    """``0.9`` -> ``"0.9"``; a string target (e.g. ``"acc_0.85"``) is kept, sanitised for metric names."""
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        return f"{float(target):g}"
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(target))


def _targets_rows(prediction: Mapping) -> list[dict]:
    """Rows ``{"target", "labels_needed", "lo", "hi"}`` from ``prediction["targets"]``.

    Accepted shapes: ``{target: {"n"|"labels_needed", "lo", "hi"}}``, ``{target: number}`` or a list of
    ``{"target", "labels_needed"|"n", "lo", "hi"}``.
    """
    raw = _first(prediction, "targets", "labels_needed", default={})
    rows = []
    items = raw.items() if isinstance(raw, Mapping) else ((r.get("target"), r) for r in map(_as_dict, raw))
    for target, value in items:
        if isinstance(value, Mapping):
            n = _first(value, "labels_needed", "n", "median")
            lo, hi = _first(value, "lo", "n_lo", "low"), _first(value, "hi", "n_hi", "high")
        else:
            n, lo, hi = value, None, None
        rows.append({"target": _target_label(target), "labels_needed": n, "lo": lo, "hi": hi})
    return rows


def _finite(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


# ----------------------------------------------------------------------------- tracker


def _guarded(method: Callable) -> Callable:
    """Re-raise MLflow/network failures as TrackingError with the URI and every secret redacted."""

    @functools.wraps(method)
    def wrapper(self: Tracker, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (MlflowException, requests.exceptions.RequestException, OSError) as exc:
            message = redact_text(f"MLflow at {self.display_uri}: {method.__name__} failed: {exc}")
            raise TrackingError(
                message[:2000] + "; check that the tracking server is up and the URI is right"
            ) from None

    return wrapper


class Tracker:
    """Log dataeff runs to MLflow and read them back.

    Args:
        tracking_uri: ``sqlite:///path/mlflow.db`` (embedded default), ``postgresql://...`` or
            ``http(s)://[user:password@]host:port`` of an ``mlflow server``. A password in the URI
            is registered as a secret and never logged.
        artifact_location: root for artifacts of experiments this tracker creates. ``None``: next to
            the SQLite file (``<dir>/mlartifacts``) for ``sqlite:`` URIs, the server's default
            (``mlflow-artifacts:/``, proxied) for ``http(s):`` URIs. Each experiment gets
            ``<root>/<project-slug>``.
        calibration_experiment: name of the experiment that holds calibration runs.
    """

    def __init__(
        self,
        tracking_uri: str,
        artifact_location: str | os.PathLike | None = None,
        *,
        calibration_experiment: str = CALIBRATION_EXPERIMENT,
    ) -> None:
        if not tracking_uri or not isinstance(tracking_uri, str):
            raise DataError("tracking_uri: give an MLflow tracking URI such as sqlite:///path/mlflow.db")
        scheme = urlparse(tracking_uri).scheme
        if scheme in ("", "file"):
            raise DataError(
                f"tracking_uri {redact_text(tracking_uri)!r}: the ./mlruns file store is not supported; "
                "use sqlite:///path/mlflow.db or an http(s):// mlflow server"
            )
        password = uri_password(tracking_uri)
        if password:
            register_secret(password)
            register_secret(unquote(password))
        self.tracking_uri = tracking_uri
        self.display_uri = redact_text(tracking_uri)
        self.calibration_experiment = calibration_experiment
        self._artifact_root = self._default_artifact_root(tracking_uri, artifact_location)
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._experiment_ids: dict[str, str] = {}

    @classmethod
    def local(cls, directory: str | os.PathLike) -> Tracker:
        """The embedded default: ``sqlite:///<directory>/mlflow.db`` with artifacts in ``<directory>/mlartifacts``."""
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{directory / 'mlflow.db'}", directory / "mlartifacts")

    def __repr__(self) -> str:
        return f"Tracker({self.display_uri!r})"

    @staticmethod
    def _default_artifact_root(uri: str, artifact_location: str | os.PathLike | None) -> str | None:
        if artifact_location is not None:
            text = str(artifact_location)
            if "://" in text or text.startswith("mlflow-artifacts:"):
                return text.rstrip("/")
            return Path(text).resolve().as_uri()
        if uri.startswith("sqlite:///"):
            db_path = Path(uri[len("sqlite:///") :])
            return (db_path.parent.resolve() / "mlartifacts").as_uri()
        return None

    # ------------------------------------------------------------------ experiments

    @_guarded
    def experiment_for(self, project: str, model: str | None = None) -> str:
        """Create or get the experiment of ``project``; returns its id.

        The experiment is named ``project`` and tagged ``dataeff.project``; ``dataeff.model`` lists
        the models logged in it (comma-separated, sorted).

        Raises:
            DataError: empty project name. TrackingError: the experiment exists but is deleted.
        """
        return self._experiment(project, model=model, kind_tag="project")

    def _experiment(self, name: str, *, model: str | None = None, kind_tag: str = "project") -> str:
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"project name {name!r}: give a non-empty name")
        exp_id = self._experiment_ids.get(name)
        if exp_id is None:
            exp = self._client.get_experiment_by_name(name)
            if exp is not None and exp.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"experiment {name!r} is deleted in MLflow at {self.display_uri}; restore it "
                    "(mlflow experiments restore) or remove it for good (mlflow gc) before reusing the name"
                )
            if exp is None:
                tags = {TAG_PROJECT: name} if kind_tag == "project" else {"dataeff.purpose": kind_tag}
                location = None
                if self._artifact_root is not None:
                    slug = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)[:60]
                    location = f"{self._artifact_root}/{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
                try:
                    exp_id = self._client.create_experiment(name, artifact_location=location, tags=redact(tags))
                    logger.info("created MLflow experiment %r (id %s) at %s", name, exp_id, self.display_uri)
                except MlflowException:  # created meanwhile by another process
                    exp = self._client.get_experiment_by_name(name)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                exp_id = exp.experiment_id
            self._experiment_ids[name] = exp_id
        if model:
            exp = self._client.get_experiment(exp_id)
            models = set(filter(None, exp.tags.get(TAG_MODEL, "").split(",")))
            if model not in models:
                value = ",".join(sorted(models | {model}))
                self._client.set_experiment_tag(exp_id, TAG_MODEL, redact_text(value)[:MAX_TAG_VAL_LENGTH])
        return exp_id

    def _existing_experiment(self, name: str) -> str | None:
        if name in self._experiment_ids:
            return self._experiment_ids[name]
        exp = self._client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage == "deleted":
            return None
        self._experiment_ids[name] = exp.experiment_id
        return exp.experiment_id

    # ------------------------------------------------------------------ run machinery

    def _search(self, experiment_id: str, filter_string: str = "", *, view: int = ViewType.ACTIVE_ONLY) -> list:
        """All runs matching ``filter_string``, newest first (every page)."""
        runs: list = []
        token = None
        while True:
            page = self._client.search_runs(
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

    def _terminate(self, run_id: str, status: str) -> None:
        # MlflowClient.set_terminated prints "View run ... at: <tracking uri>" for http stores; the URI
        # may carry a password, so the print is captured and re-emitted redacted.
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            self._client.set_terminated(run_id, status)
        if buffer.getvalue():
            sys.stdout.write(redact_text(buffer.getvalue()))

    def _log_run(
        self,
        experiment_id: str,
        *,
        key: str,
        run_name: str,
        tags: Mapping[str, Any],
        params: Mapping[str, Any] = _NO_VALUES,
        metrics: Mapping[str, Any] = _NO_VALUES,
        artifacts: Callable[[str], None] | None = None,
    ) -> LoggedRun:
        existing = self._search(experiment_id, f"tags.`{TAG_RUN_KEY}` = '{key}'")
        finished = [r for r in existing if r.info.status == "FINISHED"]
        if finished:
            logger.info("run %s (%s) already logged: %s", run_name, key[:12], finished[0].info.run_id)
            return LoggedRun(finished[0].info.run_id, key, created=False)
        stale = [r for r in existing if r.info.status in _UNFINISHED]

        all_tags = {k: v for k, v in tags.items() if v is not None}
        all_tags[TAG_RUN_KEY] = key
        all_tags["dataeff.host"] = socket.gethostname()
        all_tags["dataeff.pid"] = os.getpid()
        tag_values = {k: redact_text(str(v))[:MAX_TAG_VAL_LENGTH] for k, v in all_tags.items()}
        run = self._client.create_run(experiment_id, tags=tag_values, run_name=redact_text(run_name))
        run_id = run.info.run_id
        for old in stale:  # left RUNNING by a process that died: not done, superseded by this run
            self._client.set_tag(old.info.run_id, TAG_ABANDONED_BY, run_id)
            self._terminate(old.info.run_id, "FAILED")
            logger.warning("run %s was left unfinished; marked FAILED, replaced by %s", old.info.run_id, run_id)
        try:
            now = int(time.time() * 1000)
            metric_list = []
            for name, value in metrics.items():
                x = _finite(value)
                if x is not None:
                    metric_list.append(Metric(redact_text(str(name)), x, now, 0))
            param_list = [Param(redact_text(str(k)), _param_value(v)) for k, v in params.items() if v is not None]
            # MLflow takes at most 100 params / 1000 metrics per batch.
            for i in range(0, max(len(param_list), len(metric_list), 1), 100):
                self._client.log_batch(run_id, metrics=metric_list[i : i + 100], params=param_list[i : i + 100])
            if artifacts is not None:
                artifacts(run_id)
        except BaseException:
            self._terminate(run_id, "FAILED")
            raise
        self._terminate(run_id, "FINISHED")
        logger.info("logged %s run %s in experiment %s", run_name, run_id, experiment_id)
        return LoggedRun(run_id, key, created=True)

    def _log_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        self._client.log_dict(run_id, redact(_jsonable(data)), artifact_file)

    def _read_json(self, run_id: str, artifact_file: str) -> Any | None:
        parent = str(Path(artifact_file).parent)
        names = {f.path for f in self._client.list_artifacts(run_id, None if parent == "." else parent)}
        if artifact_file not in names:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = self._client.download_artifacts(run_id, artifact_file, tmp)
            return json.loads(Path(local).read_text(encoding="utf-8"))

    @staticmethod
    def _run_record(run) -> dict:
        return {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "kind": run.data.tags.get(TAG_KIND),
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }

    def _kind_runs(self, experiment: str, kind: str, *, model: str | None = None, finished: bool = True) -> list:
        exp_id = self._existing_experiment(experiment)
        if exp_id is None:
            return []
        flt = f"tags.`{TAG_KIND}` = '{kind}'"
        if finished:
            flt += " and attributes.status = 'FINISHED'"
        runs = self._search(exp_id, flt)
        if model is not None:
            runs = [r for r in runs if r.data.tags.get(TAG_MODEL) == model]
        return runs

    @staticmethod
    def _key_tags(kind: str, project: str, model: str | None, label_hash: str | None, budget: int | None) -> dict:
        return {TAG_KIND: kind, TAG_PROJECT: project, TAG_MODEL: model, TAG_LABEL_HASH: label_hash, TAG_BUDGET: budget}

    # ------------------------------------------------------------------ bootstrap

    @_guarded
    def log_bootstrap(
        self,
        project: str,
        model: str,
        roles: Mapping[str, Sequence[str]],
        stats: Mapping[str, Any] | None = None,
        scores: Sequence[Mapping] = (),
        figure=None,
    ) -> LoggedRun:
        """Log the bootstrap of a project: which items play which role (idempotent on project/model).

        Args:
            roles: ``{role: [item id, ...]}``, e.g. the low-confidence batch and the eval split.
            stats: numbers about the pool (``pool``, ``mean_confidence``, ...) -> metrics; ``pool`` is
                also the param ``n_pool``.
            scores: one row per pool item (``id``, ``answer``, ``confidence``, ...) -> ``confidence.csv``.
            figure: optional matplotlib Figure (confidence histogram) -> ``confidence_histogram.png``.

        A second call for the same project and model returns the first run unchanged: the roles
        are fixed once drawn. Params ``n_<role>``; artifact ``roles.json``.
        """
        if not isinstance(roles, Mapping) or not roles:
            raise DataError(f"project {project!r}: roles must be a non-empty dict {{role: [item ids]}}")
        roles_json = {str(role): [str(i) for i in ids] for role, ids in roles.items()}
        stats = dict(stats or {})
        exp_id = self._experiment(project, model=model)
        params: dict[str, Any] = {f"n_{role}": len(ids) for role, ids in roles_json.items()}
        params["n_pool"] = stats.get("pool")
        metrics = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows = [dict(r) for r in scores]

        def artifacts(run_id: str) -> None:
            self._log_json(run_id, roles_json, BOOTSTRAP_ROLES)
            if rows:
                self._client.log_text(run_id, redact_text(_csv_text(rows)), BOOTSTRAP_SCORES)
            if figure is not None:
                self._client.log_figure(run_id, figure, "confidence_histogram.png")

        key = run_key(kind="bootstrap", project=project, model=model)
        tags = self._key_tags("bootstrap", project, model, None, None)
        tags[TAG_NOTE] = "; ".join(f"{role}: {len(ids)} items" for role, ids in roles_json.items())
        return self._log_run(
            exp_id, key=key, run_name="bootstrap", tags=tags, params=params, metrics=metrics, artifacts=artifacts
        )

    @_guarded
    def read_bootstrap(self, project: str, model: str) -> dict[str, list[str]] | None:
        """The roles logged by :meth:`log_bootstrap` (``{role: [item ids]}``), or ``None`` if not bootstrapped."""
        runs = self._kind_runs(project, "bootstrap", model=model)
        return None if not runs else self._read_json(runs[0].info.run_id, BOOTSTRAP_ROLES)

    # ------------------------------------------------------------------ estimate

    @_guarded
    def log_estimate(
        self,
        project: str,
        model: str,
        label_hash: str,
        coslow_result: Mapping | Any,
        prediction: Mapping | Any,
        figure=None,
        tables: Mapping[str, Sequence[Mapping] | Mapping[str, Sequence]] | None = None,
    ) -> LoggedRun:
        """Log one CoS-Low estimate and its predicted budget (idempotent on project/model/labels).

        Args:
            project: annotation project (= experiment name).
            model: model id or alias (e.g. ``"smollm2"``).
            label_hash: :func:`label_set_hash` of the annotated low-confidence batch.
            coslow_result: dict or dataclass with ``coslow`` (required), optional ``coslow_std`` (or
                ``std``), ``mean``, ``draws`` (a count, or the per-draw values as in
                ``dataeff.coslow.CosLowResult``), ``seed``, ``n_examples``, ``lora`` (``LoraSettings`` or dict with r/alpha/
                dropout/target_modules), ``chat_template``, ``projection_dim``, ``seconds``, ``per_draw``.
            prediction: dict or dataclass with ``auc`` (or ``predicted_auc``), ``auc_lo``, ``auc_hi``,
                ``calibration`` (dict with ``family``, ``coef``, ``intercept``; or these keys at top
                level) and ``targets`` (``{0.9: {"n": 1030, "lo": 450, "hi": 2100}}``).
            figure: optional matplotlib Figure of the predicted curve -> ``predicted_curve.png``.
            tables: optional extra tables ``{name: rows}`` -> ``tables/<name>.json``.

        Returns:
            LoggedRun. Artifacts: ``estimate.json`` (both dicts, redacted), ``labels_needed.json``
            (table target -> labels needed, interval), the figure and extra tables.
        """
        coslow = _as_dict(coslow_result)
        pred = _as_dict(prediction)
        if _first(coslow, "coslow", "cos_low") is None:
            raise DataError(f"project {project!r}: coslow_result has no 'coslow' value; pass the CoS-Low result dict")
        exp_id = self._experiment(project, model=model)
        calib = _as_dict(_first(pred, "calibration", default={}))
        lora = _as_dict(_first(coslow, "lora", "lora_settings", default={}))
        draws = coslow.get("draws")
        per_draw = coslow.get("per_draw")
        if isinstance(draws, (list, tuple)):  # dataeff.coslow.CosLowResult: draws = the per-draw values
            per_draw, draws = list(draws), len(draws)
        params = {
            "lora_r": lora.get("r"),
            "lora_alpha": lora.get("alpha"),
            "lora_dropout": lora.get("dropout"),
            "lora_targets": lora.get("target_modules"),
            "seed": coslow.get("seed"),
            "draws": draws,
            "n_examples": coslow.get("n_examples"),
            "chat_template": coslow.get("chat_template"),
            "projection_dim": coslow.get("projection_dim"),
            "dtype": coslow.get("dtype"),
            "device": coslow.get("device"),
            "confidence": coslow.get("confidence"),
            "calibration_family": _first(calib, "family", default=pred.get("family")),
            "calibration_coef": _first(calib, "coef", "c", default=pred.get("coef")),
            "calibration_intercept": _first(calib, "intercept", "I", default=pred.get("intercept")),
            "label_hash": label_hash,
        }
        metrics = {
            "coslow": _first(coslow, "coslow", "cos_low"),
            "coslow_std": _first(coslow, "coslow_std", "std"),
            "coslow_mean": coslow.get("mean"),
            "predicted_auc": _first(pred, "auc", "predicted_auc"),
            "auc_lo": pred.get("auc_lo"),
            "auc_hi": pred.get("auc_hi"),
            "seconds": coslow.get("seconds"),
        }
        for i, value in enumerate(per_draw or []):
            metrics[f"coslow_draw_{i}"] = value
        rows = _targets_rows(pred)
        for row in rows:
            metrics[f"labels_needed_{row['target']}"] = row["labels_needed"]
            metrics[f"labels_needed_{row['target']}_lo"] = row["lo"]
            metrics[f"labels_needed_{row['target']}_hi"] = row["hi"]

        def artifacts(run_id: str) -> None:
            self._log_json(run_id, {"coslow_result": coslow, "prediction": pred}, ESTIMATE_JSON)
            if rows:
                self._client.log_table(run_id, redact(_table_columns(rows, "labels_needed")), "labels_needed.json")
            if figure is not None:
                self._client.log_figure(run_id, figure, "predicted_curve.png")
            for name, table in (tables or {}).items():
                safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name))
                self._client.log_table(run_id, redact(_table_columns(table, name)), f"tables/{safe}.json")

        key = run_key(kind="estimate", project=project, model=model, label_hash=label_hash, budget=None)
        tags = self._key_tags("estimate", project, model, label_hash, None)
        tags[TAG_NOTE] = _estimate_note(metrics, rows)
        return self._log_run(
            exp_id,
            key=key,
            run_name=f"estimate-{label_hash[:8]}",
            tags=tags,
            params=params,
            metrics=metrics,
            artifacts=artifacts,
        )

    @_guarded
    def latest_estimate(self, project: str, model: str) -> dict | None:
        """The newest FINISHED estimate of ``project`` for ``model``, or ``None``.

        Returns:
            ``{"run_id", "label_hash", "metrics", "params", "coslow_result", "prediction"}``; the last
            two are the (redacted) dicts given to :meth:`log_estimate`.
        """
        runs = self._kind_runs(project, "estimate", model=model)
        if not runs:
            return None
        run = runs[0]
        stored = self._read_json(run.info.run_id, ESTIMATE_JSON) or {}
        return {
            "run_id": run.info.run_id,
            "label_hash": run.data.tags.get(TAG_LABEL_HASH),
            "metrics": dict(run.data.metrics),
            "params": dict(run.data.params),
            "coslow_result": stored.get("coslow_result"),
            "prediction": stored.get("prediction"),
        }

    # ------------------------------------------------------------------ fine-tune

    @_guarded
    def log_finetune(
        self,
        project: str,
        model: str,
        label_hash: str,
        budget: int,
        result: Mapping | Any,
        adapter_dir: str | os.PathLike | None = None,
    ) -> LoggedRun:
        """Log a LoRA fine-tune at ``budget`` labels (idempotent on project/model/labels/budget).

        Args:
            budget: number of training labels (a point of the budget grid, 0 = zero-shot).
            result: dict or dataclass with ``score`` (required, in [0, 1]), optional ``seconds`` (or
                ``seconds_train`` + ``seconds_eval``), ``seed``, ``n_train``, ``n_eval``, ``lora``, ``lr``,
                ``epochs``, ``batch_size``, ``max_steps``, ``metric``, ``train_loss`` (or ``final_loss``),
                ``steps``; settings may sit under ``settings`` (``FinetuneResult.as_dict()``).
            adapter_dir: optional folder from peft ``save_pretrained``; logged under ``adapter/``
                (text files redacted on the way). Defaults to ``result["adapter_dir"]`` when that
                folder exists.
        """
        res = _as_dict(result)
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
            raise DataError(f"project {project!r}: budget must be a non-negative int, got {budget!r}")
        if _finite(res.get("score")) is None:
            raise DataError(f"project {project!r}, budget {budget}: result has no numeric 'score'")
        if adapter_dir is None and res.get("adapter_dir") and Path(res["adapter_dir"]).is_dir():
            adapter_dir = res["adapter_dir"]
        if adapter_dir is not None and not Path(adapter_dir).is_dir():
            raise DataError(f"adapter_dir {adapter_dir}: not a folder; pass the save_pretrained output folder or None")
        exp_id = self._experiment(project, model=model)
        # dataeff.finetune.FinetuneResult nests its FinetuneSettings under "settings"; top level wins.
        src = {**_as_dict(res.get("settings")), **res}
        lora = _as_dict(_first(src, "lora", "lora_settings", default=src))
        seconds = src.get("seconds")
        if seconds is None and src.get("seconds_train") is not None:
            seconds = float(src["seconds_train"]) + float(src.get("seconds_eval") or 0.0)
        params = {
            "budget": budget,
            "seed": src.get("seed"),
            "n_train": src.get("n_train"),
            "n_eval": src.get("n_eval"),
            "lora_r": lora.get("r"),
            "lora_alpha": lora.get("alpha"),
            "lora_dropout": lora.get("dropout"),
            "lora_targets": lora.get("target_modules"),
            "lr": src.get("lr"),
            "epochs": src.get("epochs"),
            "batch_size": src.get("batch_size"),
            "max_steps": src.get("max_steps"),
            "chat_template": src.get("chat_template"),
            "metric": src.get("metric"),
            "dtype": src.get("dtype"),
            "device": src.get("device"),
            "label_hash": label_hash,
        }
        metrics = {
            "score": res["score"],
            "seconds": seconds,
            "seconds_train": src.get("seconds_train"),
            "seconds_eval": src.get("seconds_eval"),
            "train_loss": _first(src, "train_loss", "final_loss"),
            "steps": src.get("steps"),
        }

        def artifacts(run_id: str) -> None:
            self._log_json(run_id, res, FINETUNE_JSON)
            if adapter_dir is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    staged = Path(tmp) / "adapter"
                    shutil.copytree(adapter_dir, staged)
                    _redact_text_files(staged)
                    self._client.log_artifacts(run_id, str(staged), "adapter")

        key = run_key(kind="finetune", project=project, model=model, label_hash=label_hash, budget=budget)
        tags = self._key_tags("finetune", project, model, label_hash, budget)
        tags[TAG_NOTE] = f"LoRA fine-tune on {budget} labels: score {float(res['score']):.4f}"
        return self._log_run(
            exp_id,
            key=key,
            run_name=f"finetune-{budget}",
            tags=tags,
            params=params,
            metrics=metrics,
            artifacts=artifacts,
        )

    @_guarded
    def finetuned_budgets(self, project: str, model: str) -> dict[int, float]:
        """Measured curve points ``{budget: score}`` of ``project`` for ``model`` (newest run per budget)."""
        points: dict[int, float] = {}
        for run in self._kind_runs(project, "finetune", model=model):  # newest first
            budget = int(run.data.tags[TAG_BUDGET])
            if budget not in points and "score" in run.data.metrics:
                points[budget] = float(run.data.metrics["score"])
        return dict(sorted(points.items()))

    # ------------------------------------------------------------------ decision

    @_guarded
    def log_decision(
        self, project: str, iteration_key: str, decision: Mapping | Any, *, model: str | None = None
    ) -> LoggedRun:
        """Log the decision of one loop iteration (idempotent on project/iteration_key).

        Args:
            iteration_key: identifies the iteration's inputs (e.g. the label-set hash + cursor); the
                same key never makes a second run.
            decision: dict or dataclass with ``action`` (required, e.g. ``"request"``, ``"finetune"``,
                ``"stop"``), ``n_labels``, ``reason``, ``status_text`` (or ``status``), ``budget``.

        Tags ``dataeff.action`` and ``dataeff.reason``; params ``action``, ``n_labels``, ``budget``;
        metric ``n_labels``; artifacts ``decision.txt`` (reason + status text) and ``decision.json``;
        the status text is also the run's description.
        """
        dec = _as_dict(decision)
        action = dec.get("action")
        if not action:
            raise DataError(f"project {project!r}, iteration {iteration_key!r}: decision has no 'action'")
        action = getattr(action, "value", action)
        exp_id = self._experiment(project, model=model)
        reason = str(dec.get("reason") or "")
        status_text = str(_first(dec, "status_text", "status", default="") or "")
        params = {
            "action": action,
            "n_labels": dec.get("n_labels"),
            "budget": dec.get("budget"),
            "iteration": iteration_key,
        }
        metrics = {"n_labels": dec.get("n_labels")}

        def artifacts(run_id: str) -> None:
            self._client.log_text(
                run_id, redact_text(f"action: {action}\nreason: {reason}\nstatus: {status_text}\n"), "decision.txt"
            )
            self._log_json(run_id, dec, DECISION_JSON)

        key = run_key(kind="decision", project=project, iteration=str(iteration_key))
        tags = self._key_tags("decision", project, model, None, dec.get("budget"))
        tags.update(
            {TAG_ITERATION: iteration_key, TAG_ACTION: action, TAG_REASON: reason, TAG_NOTE: status_text or reason}
        )
        return self._log_run(
            exp_id,
            key=key,
            run_name=f"decision-{action}",
            tags=tags,
            params=params,
            metrics=metrics,
            artifacts=artifacts,
        )

    # ------------------------------------------------------------------ calibration

    @_guarded
    def log_calibration(self, family: str, calibration: Mapping | Any) -> LoggedRun:
        """Log a calibration of a model family (idempotent on family + content).

        Args:
            family: model family (e.g. ``"smollm2"``, ``"llama-3.1-8b-instruct"``).
            calibration: dict or dataclass with ``coef`` and ``intercept`` (required), optional
                ``loo_mae``, ``baseline_mae``, ``pearson_r``, ``residual_std``, ``n_tasks``, ``tasks``.

        Logged in the experiment ``calibration_experiment`` with params family/coef/intercept/n_tasks/
        tasks, metrics for every numeric field and the whole dict as ``calibration.json``.
        """
        cal = _jsonable(_as_dict(calibration))
        if _finite(cal.get("coef")) is None or _finite(cal.get("intercept")) is None:
            raise DataError(f"calibration of {family!r}: needs numeric 'coef' and 'intercept'")
        exp_id = self._experiment(self.calibration_experiment, kind_tag="calibration")
        params = {
            "family": family,
            "coef": cal["coef"],
            "intercept": cal["intercept"],
            "n_tasks": cal.get("n_tasks"),
            "tasks": cal.get("tasks"),
        }
        metrics = {k: v for k, v in cal.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

        def artifacts(run_id: str) -> None:
            self._log_json(run_id, {"family": family, **cal}, CALIBRATION_JSON)

        key = run_key(kind="calibration", family=family, content=run_key(**redact(cal)))
        tags = {TAG_KIND: "calibration", TAG_FAMILY: family}
        return self._log_run(
            exp_id,
            key=key,
            run_name=f"calibration-{family}",
            tags=tags,
            params=params,
            metrics=metrics,
            artifacts=artifacts,
        )

    @_guarded
    def latest_calibration(self, family: str) -> dict | None:
        """The newest FINISHED calibration of ``family`` as logged (``calibration.json``), or ``None``."""
        exp_id = self._existing_experiment(self.calibration_experiment)
        if exp_id is None:
            return None
        runs = [
            r
            for r in self._search(exp_id, f"tags.`{TAG_KIND}` = 'calibration' and attributes.status = 'FINISHED'")
            if r.data.tags.get(TAG_FAMILY) == family
        ]
        if not runs:
            return None
        stored = self._read_json(runs[0].info.run_id, CALIBRATION_JSON) or {}
        return {"run_id": runs[0].info.run_id, **stored}

    # ------------------------------------------------------------------ listing

    @_guarded
    def list_runs(self, project: str, kind: str | None = None, *, include_unfinished: bool = False) -> list[dict]:
        """Runs of ``project`` (optionally of one ``kind``), newest first, as plain dicts.

        Each dict: ``run_id``, ``run_name``, ``status``, ``start_time`` (ms), ``kind``, ``tags`` (without
        ``mlflow.*``), ``params``, ``metrics``. Only FINISHED runs unless ``include_unfinished``.
        """
        if kind is not None and kind not in KINDS:
            raise DataError(f"kind {kind!r}: use one of {', '.join(KINDS)}")
        exp_id = self._existing_experiment(project)
        if exp_id is None:
            return []
        parts = [f"tags.`{TAG_KIND}` = '{kind}'"] if kind else []
        if not include_unfinished:
            parts.append("attributes.status = 'FINISHED'")
        return [self._run_record(r) for r in self._search(exp_id, " and ".join(parts))]

    # ------------------------------------------------------------------ summary run: cursor + comparison

    @overload
    def _summary_run(self, project: str, *, create: Literal[True]) -> str: ...

    @overload
    def _summary_run(self, project: str, *, create: bool) -> str | None: ...

    def _summary_run(self, project: str, *, create: bool) -> str | None:
        exp_id = self._experiment(project) if create else self._existing_experiment(project)
        if exp_id is None:
            return None
        runs = self._search(exp_id, f"tags.`{TAG_KIND}` = 'summary'")
        if runs:
            return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id  # oldest wins a race
        if not create:
            return None
        tags = {
            TAG_KIND: "summary",
            TAG_PROJECT: project,
            TAG_RUN_KEY: run_key(kind="summary", project=project),
            TAG_NOTE: "dataeff state of this project: state/cursor.json and comparison/ (overwritten in place)",
        }
        run = self._client.create_run(
            exp_id, tags={k: redact_text(str(v)) for k, v in tags.items()}, run_name="summary"
        )
        self._terminate(run.info.run_id, "FINISHED")
        return run.info.run_id

    @_guarded
    def log_cursor(self, project: str, cursor: Mapping) -> str:
        """Persist the Label Studio pull ``cursor`` (any JSON-able dict) as ``state/cursor.json``
        of the project's summary run, replacing the previous one. Returns the summary run id."""
        if not isinstance(cursor, Mapping):
            raise DataError(f"project {project!r}: cursor must be a dict, got {type(cursor).__name__}")
        run_id = self._summary_run(project, create=True)
        self._log_json(run_id, cursor, CURSOR_ARTIFACT)
        self._client.set_tag(run_id, "dataeff.cursor_updated_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return run_id

    @_guarded
    def read_cursor(self, project: str) -> dict | None:
        """The cursor last written by :meth:`log_cursor`, or ``None`` for a project never pulled."""
        run_id = self._summary_run(project, create=False)
        return None if run_id is None else self._read_json(run_id, CURSOR_ARTIFACT)

    @_guarded
    def update_comparison(self, project: str, figure, table_rows: Sequence[Mapping]) -> str:
        """Replace the project's predicted-vs-actual comparison on its summary run.

        Args:
            figure: matplotlib Figure (e.g. from ``dataeff.plots.plot_curve``) -> ``comparison/curve.png``.
            table_rows: rows such as ``{"budget", "predicted", "lo", "hi", "actual"}`` ->
                ``comparison/table.csv`` and ``comparison/table.json`` (columns = union of keys, in order).

        Returns:
            The summary run id (the same for every call on a project).
        """
        rows = [dict(r) for r in table_rows]
        run_id = self._summary_run(project, create=True)
        self._client.log_figure(run_id, figure, COMPARISON_FIGURE)
        self._client.log_text(run_id, redact_text(_csv_text(rows)), COMPARISON_TABLE_CSV)
        self._log_json(run_id, {"rows": rows}, COMPARISON_TABLE_JSON)
        self._client.set_tag(
            run_id, "dataeff.comparison_updated_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        )
        return run_id

    @_guarded
    def download_artifact(self, run_id: str, path: str, dst_dir: str | os.PathLike) -> Path:
        """Download one artifact of a run into ``dst_dir``; returns the local path."""
        return Path(self._client.download_artifacts(run_id, path, str(dst_dir)))

    # ------------------------------------------------------------------ calibration studies (dataeff study)
    # One experiment per study, one parent run per task (kind ``study-task``), a child run per
    # measurement (``study-finetune``, ``study-coslow``, ``study-confidence``), one ``study-summary``
    # run with the report. Every run carries ``dataeff.run_key`` (its inputs): a FINISHED run with the
    # same key is never written twice, so an interrupted study resumes and a finished one writes nothing.

    @_guarded
    def study_experiment(self, study: str, model: str | None = None) -> str:
        """Create or get the experiment of ``study`` (tagged ``dataeff.purpose=study``); returns its id."""
        return self._experiment(study, model=model, kind_tag="study")

    @_guarded
    def start_study_task(
        self, study: str, key: str, *, run_name: str, tags: Mapping[str, Any], params: Mapping[str, Any] = _NO_VALUES
    ) -> tuple[str, str]:
        """The parent run of one task of a study: ``(run_id, state)``.

        ``state`` is ``"finished"`` (a FINISHED run with this key exists: nothing to do),
        ``"resumed"`` (an unfinished one - interrupted or failed - is set RUNNING again and reused, so
        its children stay under it) or ``"created"``.
        """
        exp_id = self.study_experiment(study)
        runs = self._search(exp_id, f"tags.`{TAG_RUN_KEY}` = '{key}'")
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished:
            return finished[0].info.run_id, "finished"
        if runs:
            run_id = runs[0].info.run_id
            self._client.update_run(run_id, status="RUNNING")
            return run_id, "resumed"
        all_tags = {k: v for k, v in tags.items() if v is not None}
        all_tags.update({TAG_RUN_KEY: key, "dataeff.host": socket.gethostname(), "dataeff.pid": os.getpid()})
        run = self._client.create_run(
            exp_id,
            tags={k: redact_text(str(v))[:MAX_TAG_VAL_LENGTH] for k, v in all_tags.items()},
            run_name=redact_text(run_name),
        )
        param_list = [Param(redact_text(str(k)), _param_value(v)) for k, v in params.items() if v is not None]
        for i in range(0, len(param_list), 100):
            self._client.log_batch(run.info.run_id, params=param_list[i : i + 100])
        return run.info.run_id, "created"

    @_guarded
    def finish_study_task(
        self,
        run_id: str,
        *,
        metrics: Mapping[str, Any] = _NO_VALUES,
        data: Any = None,
        artifact_file: str = "task_result.json",
        status: str = "FINISHED",
        tags: Mapping[str, Any] = _NO_VALUES,
    ) -> None:
        """Log the task's metrics and result JSON on its parent run and end it with ``status``."""
        now = int(time.time() * 1000)
        metric_list = [
            Metric(redact_text(str(k)), x, now, 0) for k, v in metrics.items() if (x := _finite(v)) is not None
        ]
        for i in range(0, len(metric_list), 1000):
            self._client.log_batch(run_id, metrics=metric_list[i : i + 1000])
        for k, v in dict(tags).items():
            self._client.set_tag(run_id, k, redact_text(str(v))[:MAX_TAG_VAL_LENGTH])
        if data is not None:
            self._log_json(run_id, data, artifact_file)
        self._terminate(run_id, status)

    @_guarded
    def end_run(self, run_id: str, status: str = "KILLED") -> None:
        """End a run (e.g. a study task's parent on an interruption) with ``status``."""
        self._terminate(run_id, status)

    @_guarded
    def finished_study_runs(self, study: str) -> dict[str, dict]:
        """``{run key: run record}`` of the study's FINISHED runs (see :meth:`list_runs` for a record)."""
        exp_id = self._existing_experiment(study)
        if exp_id is None:
            return {}
        out: dict[str, dict] = {}
        for run in self._search(exp_id, "attributes.status = 'FINISHED'"):
            key = run.data.tags.get(TAG_RUN_KEY)
            if key and key not in out:
                out[key] = self._run_record(run)
        return out

    @_guarded
    def log_study_run(
        self,
        study: str,
        *,
        key: str,
        kind: str,
        run_name: str,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] = _NO_VALUES,
        params: Mapping[str, Any] = _NO_VALUES,
        metrics: Mapping[str, Any] = _NO_VALUES,
        data: Any = None,
        artifact_file: str = "result.json",
        texts: Mapping[str, str] = _NO_VALUES,
    ) -> LoggedRun:
        """Log one measurement of a study (idempotent on ``key``), as a child of ``parent_run_id`` if given.

        ``data`` is stored as ``artifact_file`` (JSON); ``texts`` as ``{artifact path: text}``.
        """
        exp_id = self.study_experiment(study)
        all_tags = {TAG_KIND: kind, **dict(tags)}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id

        def artifacts(run_id: str) -> None:
            if data is not None:
                self._log_json(run_id, data, artifact_file)
            for path, text in dict(texts).items():
                self._client.log_text(run_id, redact_text(text), path)

        return self._log_run(
            exp_id, key=key, run_name=run_name, tags=all_tags, params=params, metrics=metrics, artifacts=artifacts
        )

    @_guarded
    def log_study_failure(
        self,
        study: str,
        *,
        key: str,
        kind: str,
        run_name: str,
        error: str,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] = _NO_VALUES,
        params: Mapping[str, Any] = _NO_VALUES,
    ) -> str:
        """Record a measurement that raised as a FAILED run (tag ``dataeff.error``); a re-run tries it again."""
        exp_id = self.study_experiment(study)
        all_tags = {
            TAG_KIND: kind,
            TAG_RUN_KEY: key,
            "dataeff.error": error,
            TAG_NOTE: f"failed: {error}",
            **dict(tags),
        }
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self._client.create_run(
            exp_id,
            tags={k: redact_text(str(v))[:MAX_TAG_VAL_LENGTH] for k, v in all_tags.items() if v is not None},
            run_name=redact_text(run_name),
        )
        param_list = [Param(redact_text(str(k)), _param_value(v)) for k, v in params.items() if v is not None]
        if param_list:
            self._client.log_batch(run.info.run_id, params=param_list[:100])
        self._terminate(run.info.run_id, "FAILED")
        return run.info.run_id

    @_guarded
    def read_run_json(self, run_id: str, artifact_file: str) -> Any | None:
        """A JSON artifact of a run, or ``None`` when the run has no such file."""
        return self._read_json(run_id, artifact_file)

    @_guarded
    def log_run_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        """Store ``data`` (redacted) as the JSON artifact ``artifact_file`` of a run."""
        self._log_json(run_id, data, artifact_file)

    @_guarded
    def list_study_runs(self, study: str, *, include_unfinished: bool = True) -> list[dict]:
        """Every run of a study (newest first) as plain records (see :meth:`list_runs`)."""
        exp_id = self._existing_experiment(study)
        if exp_id is None:
            return []
        flt = "" if include_unfinished else "attributes.status = 'FINISHED'"
        return [self._run_record(r) for r in self._search(exp_id, flt, view=ViewType.ALL)]


# ----------------------------------------------------------------------------- small helpers


def _table_columns(table: Sequence[Mapping] | Mapping[str, Sequence], name: str = "table") -> dict[str, list]:
    """Rows (list of dicts) or columns (dict of lists) -> columns, JSON-friendly.

    Raises:
        DataError: naming ``name`` when ``table`` is neither.
    """
    try:
        if isinstance(table, Mapping):
            return {str(k): _jsonable(list(v)) for k, v in table.items()}
        rows = [dict(r) for r in table]
    except (TypeError, ValueError):
        raise DataError(
            f"table {name!r}: expected a list of row dicts or a dict of columns, got {type(table).__name__}"
        ) from None
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return {c: _jsonable([row.get(c) for row in rows]) for c in columns}


def _csv_text(rows: Sequence[Mapping]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_jsonable(rows))
    return buffer.getvalue()


def _estimate_note(metrics: Mapping, rows: Sequence[Mapping]) -> str:
    parts = [f"CoS-Low {float(metrics['coslow']):.3f}"]
    if metrics.get("predicted_auc") is not None:
        parts.append(f"predicted AUC {float(metrics['predicted_auc']):.3f}")
    for row in rows:
        if row["labels_needed"] is not None:
            interval = f" ({row['lo']:.0f}-{row['hi']:.0f})" if row["lo"] is not None and row["hi"] is not None else ""
            parts.append(f"target {row['target']}: {float(row['labels_needed']):.0f} labels{interval}")
    return "; ".join(parts)


_TEXT_SUFFIXES = {".json", ".txt", ".md", ".yaml", ".yml", ".cfg", ".ini", ".csv", ".jinja"}


def _redact_text_files(folder: Path) -> None:
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
