"""MLflow tracking for dataeff: the public facade that logs dataeff's runs and reads them back.

One MLflow experiment per annotation project (named after the project); one experiment
``dataeff-calibrations`` for calibrations of model families. The run kinds, their keys, params,
metrics and artifacts are the table of :mod:`integrations.mlflow_schema` (for people:
docs/mlflow-schema.md); keyed, idempotent writing is :mod:`integrations.mlflow_runs`. The ``log_*``
methods take dataeff's own dataclasses (:class:`~dataeff.coslow.CosLowResult`,
:class:`~dataeff.efficiency.Prediction`, :class:`~dataeff.finetune.FinetuneResult`,
:class:`~dataeff.policy.Decision`, :class:`~dataeff.confidence.ConfidenceScore`).

:meth:`Tracker.for_project` binds a tracker to one project and model (:class:`ProjectTracker`),
which is what the flows use.

Per project, one ``summary`` run holds the state that is overwritten in place:
``state/cursor.json`` (the Label Studio pull cursor) and ``comparison/`` (predicted vs actual
curve figure and table).

Every param, tag, metric name, JSON/text artifact and log line passes through
:func:`integrations.secrets.redact`; the password of the tracking URI is registered as a secret
and only the redacted URI is ever shown.

Only this package talks to MLflow; it uses an ``mlflow.MlflowClient`` bound to an explicit tracking
URI, never the global ``mlflow.set_tracking_uri`` state.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from dataeff.confidence import ConfidenceScore
from dataeff.coslow import CosLowResult
from dataeff.efficiency import LabelsNeeded, Prediction
from dataeff.errors import DataError
from dataeff.finetune import FinetuneResult
from dataeff.policy import Decision
from integrations import mlflow_schema as schema
from integrations.mlflow_runs import (
    NO_VALUES,
    TAG_ABANDONED_BY,
    TAG_RUN_KEY,
    DatasetRef,
    LoggedRun,
    RunStore,
    TrackingError,
    csv_text,
    guarded,
    redact_text_files,
    run_key,
    safe_name,
)
from integrations.mlflow_schema import (
    CALIBRATION_EXPERIMENT,
    COMPARISON_FIGURE,
    COMPARISON_TABLE_CSV,
    COMPARISON_TABLE_JSON,
    CURSOR_ARTIFACT,
    KINDS,
    TAG_KIND,
    TAG_LABEL_HASH,
    TAG_MODEL,
    TAG_NOTE,
    RunSpec,
)
from integrations.mlflow_system import Sample
from integrations.secrets import RedactingFilter, redact_text, register_secret, uri_password

__all__ = [
    "CALIBRATION_EXPERIMENT",
    "COMPARISON_FIGURE",
    "KINDS",
    "DatasetRef",
    "TAG_ABANDONED_BY",
    "TAG_RUN_KEY",
    "LoggedRun",
    "ProjectTracker",
    "Tracker",
    "TrackingError",
    "run_key",
]

logger = logging.getLogger(__name__)
logger.addFilter(RedactingFilter())


def _run_record(run: Run) -> dict:
    """A run as a plain dict: ``run_id``, ``run_name``, ``status``, ``start_time`` (ms), ``kind``,
    ``tags`` (without ``mlflow.*``), ``params``, ``metrics``."""
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


class _IterationParent:
    """The parent run of one loop iteration, created on the first call (when a child run is written).

    Passed as ``parent`` to :meth:`RunStore.log_run`. A FINISHED parent with the same key (the
    iteration ran before and a child was only now written, e.g. after an MLflow outage) is reused
    as it is; an unfinished one is resumed.
    """

    def __init__(self, runs: RunStore, experiment_id: str, spec: RunSpec) -> None:
        self._runs, self._experiment_id, self._spec = runs, experiment_id, spec
        self.run_id: str | None = None
        self._state: str | None = None

    def __call__(self) -> str:
        if self.run_id is None:
            s = self._spec
            self.run_id, self._state = self._runs.start(
                self._experiment_id, key=s.key, run_name=s.run_name, tags=s.tags, params=s.params
            )
        return self.run_id

    def finish(self, metrics: Mapping[str, Any], status: str) -> str | None:
        """End the parent (if one was created and is not already FINISHED) with ``metrics``; its id or ``None``."""
        if self.run_id is not None and self._state != "finished":
            self._runs.log_values(self.run_id, metrics=metrics)
            self._runs.terminate(self.run_id, status)
        return self.run_id


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
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._runs = RunStore(
            self._client, self.display_uri, self._default_artifact_root(tracking_uri, artifact_location)
        )
        self._iterations: dict[str, _IterationParent] = {}

    @classmethod
    def local(cls, directory: str | os.PathLike) -> Tracker:
        """The embedded default: ``sqlite:///<directory>/mlflow.db`` with artifacts in ``<directory>/mlartifacts``."""
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{directory / 'mlflow.db'}", directory / "mlartifacts")

    def __repr__(self) -> str:
        return f"Tracker({self.display_uri!r})"

    def for_project(self, project: str, model: str) -> ProjectTracker:
        """This tracker bound to one annotation project and model."""
        return ProjectTracker(self, project, model)

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

    @guarded
    def experiment_for(self, project: str, model: str | None = None) -> str:
        """Create or get the experiment of ``project``; returns its id.

        The experiment is named ``project`` and tagged ``dataeff.project``; ``dataeff.model`` lists
        the models logged in it (comma-separated, sorted); ``mlflow.experimentKind`` =
        ``custom_model_development`` records it as model training (added to an existing experiment
        that has no kind yet; MLflow 3.17's UI shows the runs for links with
        ``workflowType=machine_learning``, :func:`integrations.mlflow_ui.experiment_link`).

        Raises:
            DataError: empty project name. TrackingError: the experiment exists but is deleted.
        """
        return self._experiment(project, model=model)

    def _experiment(self, name: str, *, model: str | None = None, purpose: str | None = None) -> str:
        """A project's experiment, or (``purpose`` given) one tagged ``dataeff.purpose`` = ``purpose``."""
        tags = {schema.TAG_PROJECT: name} if purpose is None else {schema.TAG_PURPOSE: purpose}
        exp_id = self._runs.experiment(name, tags, ensure_tags=schema.EXPERIMENT_TAGS)
        if model:
            self._runs.add_to_list_tag(exp_id, TAG_MODEL, model)
        return exp_id

    def _write(self, experiment_id: str, spec: RunSpec, artifacts=None, *, project: str | None = None) -> LoggedRun:
        """Write ``spec`` (keyed); nested under ``project``'s current iteration, if one is begun."""
        parent = self._iterations.get(project) if project is not None else None
        return self._runs.log_run(
            experiment_id,
            key=spec.key,
            run_name=spec.run_name,
            tags=spec.tags,
            params=spec.params,
            metrics=spec.metrics,
            artifacts=artifacts,
            start_time=spec.start_time,
            end_time=spec.end_time,
            parent=parent,
        )

    # ------------------------------------------------------------------ iteration (parent runs)

    @guarded
    def begin_iteration(self, project: str, model: str, iteration_key: str, labeled: int) -> None:
        """Nest ``project``'s estimate, fine-tune and decision runs written from now on under one
        parent run of kind ``iteration`` (keyed by ``iteration_key``), created with the first of them.

        Until :meth:`end_iteration`; a second call replaces the first (which is ended first).
        """
        if project in self._iterations:
            self.end_iteration(project)
        exp_id = self._experiment(project, model=model)
        spec = schema.iteration_run(project, model, iteration_key, labeled)
        self._iterations[project] = _IterationParent(self._runs, exp_id, spec)

    @guarded
    def end_iteration(
        self, project: str, metrics: Mapping[str, Any] = NO_VALUES, status: str = "FINISHED"
    ) -> str | None:
        """End ``project``'s iteration: its parent run (if a child was written) gets ``metrics``
        (:func:`~integrations.mlflow_schema.iteration_metrics`) and ``status``. Returns the parent's
        id, or ``None`` when no child was written (or no iteration was begun)."""
        parent = self._iterations.pop(project, None)
        return parent.finish(metrics, status) if parent is not None else None

    def _kind_runs(self, experiment: str, kind: str, *, model: str | None = None) -> list[Run]:
        """FINISHED runs of ``kind`` (of ``model`` when given), newest first."""
        exp_id = self._runs.existing_experiment(experiment)
        if exp_id is None:
            return []
        runs = self._runs.search(exp_id, f"tags.`{TAG_KIND}` = '{kind}' and attributes.status = 'FINISHED'")
        return runs if model is None else [r for r in runs if r.data.tags.get(TAG_MODEL) == model]

    # ------------------------------------------------------------------ bootstrap

    @guarded
    def log_bootstrap(
        self,
        project: str,
        model: str,
        roles: Mapping[str, Sequence[str]],
        stats: Mapping[str, Any] | None = None,
        scores: Sequence[ConfidenceScore] = (),
        figure=None,
    ) -> LoggedRun:
        """Log the bootstrap of a project: which items play which role (idempotent on project/model).

        Args:
            roles: ``{role: [item id, ...]}``, e.g. the low-confidence batch and the eval split.
            stats: numbers about the pool (``pool``, ``mean_confidence``, ...) -> metrics; ``pool`` is
                also the param ``n_pool``.
            scores: the confidence of each pool item -> ``confidence.csv`` (one row each).
            figure: optional matplotlib Figure (confidence histogram) -> ``confidence_histogram.png``.

        A second call for the same project and model returns the first run unchanged: the roles
        are fixed once drawn. Params ``n_<role>``; artifact ``roles.json``.
        """
        spec, roles_json = schema.bootstrap_run(project, model, roles, stats or {})
        exp_id = self._experiment(project, model=model)
        rows = [s.as_dict() for s in scores]

        def artifacts(run_id: str) -> None:
            self._runs.log_json(run_id, roles_json, schema.BOOTSTRAP_ROLES)
            if rows:
                self._runs.log_text(run_id, csv_text(rows), schema.BOOTSTRAP_SCORES)
            if figure is not None:
                self._client.log_figure(run_id, figure, schema.BOOTSTRAP_FIGURE)

        return self._write(exp_id, spec, artifacts)

    @guarded
    def read_bootstrap(self, project: str, model: str) -> dict[str, list[str]] | None:
        """The roles logged by :meth:`log_bootstrap` (``{role: [item ids]}``), or ``None`` if not bootstrapped."""
        runs = self._kind_runs(project, "bootstrap", model=model)
        return None if not runs else self._runs.read_json(runs[0].info.run_id, schema.BOOTSTRAP_ROLES)

    # ------------------------------------------------------------------ estimate

    @guarded
    def log_estimate(
        self,
        project: str,
        model: str,
        label_hash: str,
        coslow: CosLowResult,
        prediction: Prediction,
        targets: Sequence[float],
        *,
        figure=None,
        tables: Mapping[str, Sequence[Mapping] | Mapping[str, Sequence]] | None = None,
        needs: Mapping[float, LabelsNeeded] | None = None,
        needs_from: str | None = None,
        datasets: Sequence[DatasetRef] = (),
    ) -> LoggedRun:
        """Log one CoS-Low estimate and the prediction made from it (idempotent on project/model/labels).

        Args:
            project: annotation project (= experiment name).
            model: model id or alias (e.g. ``"smollm2"``).
            label_hash: :func:`~dataeff.iteration.label_set_hash` of the annotated low-confidence batch.
            coslow: the CoS-Low result.
            prediction: the calibration's prediction from it (family in ``prediction.extra["calibration"]``).
            targets: normalised targets whose labels needed are logged (``labels_needed_<t>``).
            figure: optional matplotlib Figure of the predicted curve -> ``predicted_curve.png``.
            tables: optional extra tables ``{name: rows}`` -> ``tables/<name>.json``.
            needs: labels needed per target of the assessment the loop decided on (posterior once the
                zero-shot is measured); ``labels_needed_<t>`` (``_lo``, ``_hi``) and
                ``labels_needed.json`` come from it, rounded up to whole labels (else from ``prediction``).
            needs_from: where ``needs`` come from (``"posterior"``, ``"prediction"``) -> tag
                ``dataeff.labels_needed_from``.
            datasets: dataset inputs of the run (the low-confidence batch), ``mlflow.data``.

        Returns:
            LoggedRun. Artifacts: ``estimate.json`` (``coslow_result`` = ``coslow.as_dict()`` and
            ``prediction`` = :func:`~integrations.mlflow_schema.prediction_record` (the paper's
            prediction alone, unrounded), redacted), ``labels_needed.json`` (table target -> labels
            needed, interval), the figure and extra tables. The run spans ``coslow.seconds``.
        """
        spec = schema.estimate_run(
            project, model, label_hash, coslow, prediction, targets, needs=needs, needs_from=needs_from
        )
        exp_id = self._experiment(project, model=model)
        record = {
            "coslow_result": coslow.as_dict(),
            "prediction": schema.prediction_record(prediction, targets),
        }
        rows = schema.needs_rows(prediction, targets, needs)

        def artifacts(run_id: str) -> None:
            self._runs.log_json(run_id, record, schema.ESTIMATE_JSON)
            if rows:
                self._runs.log_table(run_id, rows, schema.ESTIMATE_NEEDS, "labels_needed")
            if figure is not None:
                self._client.log_figure(run_id, figure, schema.ESTIMATE_FIGURE)
            for name, table in (tables or {}).items():
                self._runs.log_table(run_id, table, f"tables/{safe_name(str(name))}.json", name)
            self._runs.log_datasets(run_id, datasets)

        return self._write(exp_id, spec, artifacts, project=project)

    @guarded
    def latest_estimate(self, project: str, model: str) -> dict | None:
        """The newest FINISHED estimate of ``project`` for ``model``, or ``None``.

        Returns:
            ``{"run_id", "label_hash", "metrics", "params", "coslow_result", "prediction"}``; the last
            two are the (redacted) dicts stored in ``estimate.json`` (see :meth:`log_estimate`).
        """
        runs = self._kind_runs(project, "estimate", model=model)
        if not runs:
            return None
        run = runs[0]
        stored = self._runs.read_json(run.info.run_id, schema.ESTIMATE_JSON) or {}
        return {
            "run_id": run.info.run_id,
            "label_hash": run.data.tags.get(TAG_LABEL_HASH),
            "metrics": dict(run.data.metrics),
            "params": dict(run.data.params),
            "coslow_result": stored.get("coslow_result"),
            "prediction": stored.get("prediction"),
        }

    # ------------------------------------------------------------------ fine-tune

    @guarded
    def log_finetune(
        self,
        project: str,
        model: str,
        label_hash: str,
        result: FinetuneResult,
        adapter_dir: str | os.PathLike | None = None,
        *,
        datasets: Sequence[DatasetRef] = (),
        system: Sequence[Sample] = (),
    ) -> LoggedRun:
        """Log a LoRA fine-tune at ``result.budget`` labels (idempotent on project/model/labels/budget).

        Args:
            label_hash: hash of the labels trained and evaluated on.
            result: the fine-tune's result (budget 0 = zero-shot); ``finetune.json`` = ``result.as_dict()``.
            adapter_dir: optional folder from peft ``save_pretrained``; logged under ``adapter/``
                (text files redacted on the way). Defaults to ``result.adapter_dir`` when that
                folder exists.
            datasets: dataset inputs (training subset, eval split), ``mlflow.data``.
            system: system metrics sampled during the fine-tune
                (:class:`~integrations.mlflow_system.SystemSampler`), logged with their timestamps.

        The run spans ``seconds_train + seconds_eval`` (ending when it is logged), so MLflow's
        duration is the fine-tune's. :meth:`log_predicted` adds the predicted score later.
        """
        spec = schema.finetune_run(project, model, label_hash, result)
        if adapter_dir is None and result.adapter_dir and Path(result.adapter_dir).is_dir():
            adapter_dir = result.adapter_dir
        if adapter_dir is not None and not Path(adapter_dir).is_dir():
            raise DataError(f"adapter_dir {adapter_dir}: not a folder; pass the save_pretrained output folder or None")
        exp_id = self._experiment(project, model=model)

        def artifacts(run_id: str) -> None:
            self._runs.log_json(run_id, result.as_dict(), schema.FINETUNE_JSON)
            if adapter_dir is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    staged = Path(tmp) / schema.FINETUNE_ADAPTER
                    shutil.copytree(adapter_dir, staged)
                    redact_text_files(staged)
                    self._client.log_artifacts(run_id, str(staged), schema.FINETUNE_ADAPTER)
            self._runs.log_datasets(run_id, datasets)
            self._runs.log_timed_metrics(run_id, [(s.name, s.value, s.timestamp, s.step) for s in system])

        return self._write(exp_id, spec, artifacts, project=project)

    @guarded
    def finetuned_budgets(self, project: str, model: str) -> dict[int, float]:
        """Measured curve points ``{budget: score}`` of ``project`` for ``model`` (newest run per budget)."""
        points: dict[int, float] = {}
        for run in self._kind_runs(project, "finetune", model=model):  # newest first
            budget = int(run.data.tags[schema.TAG_BUDGET])
            if budget not in points and "score" in run.data.metrics:
                points[budget] = float(run.data.metrics["score"])
        return dict(sorted(points.items()))

    @guarded
    def log_predicted(self, run_id: str, median: float, lo: float, hi: float) -> dict[str, float]:
        """Add the score predicted for a fine-tune's budget to its (finished) run: ``predicted_score``,
        ``predicted_score_lo``, ``predicted_score_hi``, beside the measured ``score``.

        Idempotent: metrics the run already has are kept (the first prediction stays). Returns the
        metrics written now (``{}`` when the run had them).
        """
        return self._runs.add_metrics(run_id, schema.predicted_score_metrics(median, lo, hi))

    # ------------------------------------------------------------------ decision

    @guarded
    def log_decision(
        self,
        project: str,
        iteration_key: str,
        decision: Decision,
        *,
        model: str | None = None,
        summary: Mapping[str, Any] | None = None,
        needs: Mapping[float, LabelsNeeded] | None = None,
        needs_from: str | None = None,
    ) -> LoggedRun:
        """Log the decision of one loop iteration (idempotent on project/iteration_key).

        Args:
            iteration_key: identifies the iteration's inputs (e.g. the label-set hash + cursor); the
                same key never makes a second run.
            decision: the policy's decision.
            summary: the iteration's summary, stored beside the decision in ``decision.json``.
            needs: labels needed per target of the assessment the decision was made on ->
                ``labels_needed_<t>`` (``_lo``, ``_hi``), whole labels, as on the estimate run.
            needs_from: where ``needs`` come from -> tag ``dataeff.labels_needed_from``.

        Tags ``dataeff.action`` and ``dataeff.reason``; params ``action``, ``n_labels``, ``budget``;
        metric ``n_labels``; artifacts ``decision.txt`` (reason + status text) and ``decision.json``;
        the status text is also the run's description.
        """
        spec = schema.decision_run(project, model, iteration_key, decision, needs=needs, needs_from=needs_from)
        exp_id = self._experiment(project, model=model)

        def artifacts(run_id: str) -> None:
            self._runs.log_text(run_id, schema.decision_text(decision), schema.DECISION_TEXT)
            self._runs.log_json(run_id, schema.decision_record(decision, summary), schema.DECISION_JSON)

        return self._write(exp_id, spec, artifacts, project=project)

    # ------------------------------------------------------------------ calibration

    @guarded
    def log_calibration(self, family: str, calibration: Mapping[str, Any]) -> LoggedRun:
        """Log a calibration of a model family (idempotent on family + content).

        Args:
            family: model family (e.g. ``"smollm2"``, ``"llama-3.1-8b-instruct"``).
            calibration: :meth:`dataeff.calibration.Calibration.as_dict`: ``coef`` and ``intercept``
                (required), optional ``loo_mae``, ``baseline_mae``, ``pearson_r``, ``residual_std``,
                ``n_tasks``, ``tasks``.

        Logged in the experiment ``calibration_experiment`` with params family/coef/intercept/n_tasks/
        tasks, metrics for every numeric field and the whole dict as ``calibration.json``.
        """
        spec, record = schema.calibration_run(family, calibration)
        exp_id = self._experiment(self.calibration_experiment, purpose="calibration")
        return self._write(exp_id, spec, lambda run_id: self._runs.log_json(run_id, record, schema.CALIBRATION_JSON))

    @guarded
    def latest_calibration(self, family: str) -> dict | None:
        """The newest FINISHED calibration of ``family`` as logged (``calibration.json``), or ``None``."""
        runs = [
            r
            for r in self._kind_runs(self.calibration_experiment, "calibration")
            if r.data.tags.get(schema.TAG_FAMILY) == family
        ]
        if not runs:
            return None
        stored = self._runs.read_json(runs[0].info.run_id, schema.CALIBRATION_JSON) or {}
        return {"run_id": runs[0].info.run_id, **stored}

    # ------------------------------------------------------------------ listing

    @guarded
    def list_runs(self, project: str, kind: str | None = None, *, include_unfinished: bool = False) -> list[dict]:
        """Runs of ``project`` (optionally of one ``kind``), newest first, as plain dicts.

        Each dict: ``run_id``, ``run_name``, ``status``, ``start_time`` (ms), ``kind``, ``tags`` (without
        ``mlflow.*``), ``params``, ``metrics``. Only FINISHED runs unless ``include_unfinished``.
        """
        if kind is not None and kind not in KINDS:
            raise DataError(f"kind {kind!r}: use one of {', '.join(KINDS)}")
        exp_id = self._runs.existing_experiment(project)
        if exp_id is None:
            return []
        parts = [f"tags.`{TAG_KIND}` = '{kind}'"] if kind else []
        if not include_unfinished:
            parts.append("attributes.status = 'FINISHED'")
        return [_run_record(r) for r in self._runs.search(exp_id, " and ".join(parts))]

    # ------------------------------------------------------------------ summary run: cursor + comparison

    @overload
    def _summary_run(self, project: str, *, create: Literal[True]) -> str: ...

    @overload
    def _summary_run(self, project: str, *, create: bool) -> str | None: ...

    def _summary_run(self, project: str, *, create: bool) -> str | None:
        exp_id = self._experiment(project) if create else self._runs.existing_experiment(project)
        if exp_id is None:
            return None
        runs = self._runs.search(exp_id, f"tags.`{TAG_KIND}` = 'summary'")
        if runs:
            return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id  # oldest wins a race
        if not create:
            return None
        run_id = self._runs.create(exp_id, schema.SUMMARY.run_name, schema.summary_tags(project))
        self._runs.terminate(run_id, "FINISHED")
        return run_id

    @guarded
    def log_cursor(self, project: str, cursor: Mapping) -> str:
        """Persist the Label Studio pull ``cursor`` (any JSON-able dict) as ``state/cursor.json``
        of the project's summary run, replacing the previous one. Returns the summary run id."""
        if not isinstance(cursor, Mapping):
            raise DataError(f"project {project!r}: cursor must be a dict, got {type(cursor).__name__}")
        run_id = self._summary_run(project, create=True)
        self._runs.log_json(run_id, cursor, CURSOR_ARTIFACT)
        self._client.set_tag(run_id, "dataeff.cursor_updated_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return run_id

    @guarded
    def read_cursor(self, project: str) -> dict | None:
        """The cursor last written by :meth:`log_cursor`, or ``None`` for a project never pulled."""
        run_id = self._summary_run(project, create=False)
        return None if run_id is None else self._runs.read_json(run_id, CURSOR_ARTIFACT)

    @guarded
    def update_comparison(
        self,
        project: str,
        figure,
        table_rows: Sequence[Mapping],
        *,
        measured: Mapping[int, float] | None = None,
        predicted: Mapping[int, Sequence[float]] | None = None,
    ) -> str:
        """Replace the project's predicted-vs-actual comparison on its summary run.

        Args:
            figure: matplotlib Figure (e.g. from ``dataeff.plots.plot_curve``) -> ``comparison/curve.png``.
            table_rows: rows such as ``{"budget", "predicted", "lo", "hi", "actual"}`` ->
                ``comparison/table.csv`` and ``comparison/table.json`` (columns = union of keys, in order).
            measured: ``{labels: score}`` measured -> step metric ``measured_score`` (step = labels).
            predicted: ``{labels: (median, lo, hi)}`` predicted for a budget before it was measured ->
                step metrics ``predicted_score``, ``predicted_score_lo``, ``predicted_score_hi``.
                With ``measured``, MLflow's chart view (x axis: step) draws estimate vs actual.
                Each step is written once (a changed value gets a newer entry at its step).

        Returns:
            The summary run id (the same for every call on a project).
        """
        rows = [dict(r) for r in table_rows]
        run_id = self._summary_run(project, create=True)
        if measured or predicted:
            self._runs.log_step_metrics(run_id, schema.comparison_series(measured or {}, predicted or {}))
        self._client.log_figure(run_id, figure, COMPARISON_FIGURE)
        self._runs.log_text(run_id, csv_text(rows), COMPARISON_TABLE_CSV)
        self._runs.log_json(run_id, {"rows": rows}, COMPARISON_TABLE_JSON)
        self._client.set_tag(
            run_id, "dataeff.comparison_updated_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        )
        return run_id

    @guarded
    def download_artifact(self, run_id: str, path: str, dst_dir: str | os.PathLike) -> Path:
        """Download one artifact of a run into ``dst_dir``; returns the local path."""
        return Path(self._client.download_artifacts(run_id, path, str(dst_dir)))

    # ------------------------------------------------------------------ calibration studies (dataeff study)
    # One experiment per study, one parent run per task (kind ``study-task``), a child run per
    # measurement (``study-finetune``, ``study-coslow``, ``study-confidence``), one ``study-summary``
    # run with the report. Every run carries ``dataeff.run_key`` (its inputs): a FINISHED run with the
    # same key is never written twice, so an interrupted study resumes and a finished one writes nothing.

    @guarded
    def study_experiment(self, study: str, model: str | None = None) -> str:
        """Create or get the experiment of ``study`` (tagged ``dataeff.purpose=study``); returns its id."""
        return self._experiment(study, model=model, purpose="study")

    @guarded
    def start_study_task(
        self, study: str, key: str, *, run_name: str, tags: Mapping[str, Any], params: Mapping[str, Any] = NO_VALUES
    ) -> tuple[str, str]:
        """The parent run of one task of a study: ``(run_id, state)``.

        ``state`` is ``"finished"`` (a FINISHED run with this key exists: nothing to do),
        ``"resumed"`` (an unfinished one - interrupted or failed - is set RUNNING again and reused, so
        its children stay under it) or ``"created"``.
        """
        exp_id = self.study_experiment(study)
        return self._runs.start(exp_id, key=key, run_name=run_name, tags=tags, params=params)

    @guarded
    def finish_study_task(
        self,
        run_id: str,
        *,
        metrics: Mapping[str, Any] = NO_VALUES,
        data: Any = None,
        artifact_file: str = "task_result.json",
        status: str = "FINISHED",
        tags: Mapping[str, Any] = NO_VALUES,
    ) -> None:
        """Log the task's metrics and result JSON on its parent run and end it with ``status``."""
        self._runs.log_values(run_id, metrics=metrics)
        self._runs.set_tags(run_id, tags)
        if data is not None:
            self._runs.log_json(run_id, data, artifact_file)
        self._runs.terminate(run_id, status)

    @guarded
    def end_run(self, run_id: str, status: str = "KILLED") -> None:
        """End a run (e.g. a study task's parent on an interruption) with ``status``."""
        self._runs.terminate(run_id, status)

    @guarded
    def finished_study_runs(self, study: str) -> dict[str, dict]:
        """``{run key: run record}`` of the study's FINISHED runs (see :meth:`list_runs` for a record)."""
        exp_id = self._runs.existing_experiment(study)
        if exp_id is None:
            return {}
        out: dict[str, dict] = {}
        for run in self._runs.search(exp_id, "attributes.status = 'FINISHED'"):
            key = run.data.tags.get(TAG_RUN_KEY)
            if key and key not in out:
                out[key] = _run_record(run)
        return out

    @guarded
    def log_study_run(
        self,
        study: str,
        *,
        key: str,
        kind: str,
        run_name: str,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] = NO_VALUES,
        params: Mapping[str, Any] = NO_VALUES,
        metrics: Mapping[str, Any] = NO_VALUES,
        data: Any = None,
        artifact_file: str = "result.json",
        texts: Mapping[str, str] = NO_VALUES,
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
                self._runs.log_json(run_id, data, artifact_file)
            for path, text in dict(texts).items():
                self._runs.log_text(run_id, text, path)

        return self._runs.log_run(
            exp_id, key=key, run_name=run_name, tags=all_tags, params=params, metrics=metrics, artifacts=artifacts
        )

    @guarded
    def log_study_failure(
        self,
        study: str,
        *,
        key: str,
        kind: str,
        run_name: str,
        error: str,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] = NO_VALUES,
        params: Mapping[str, Any] = NO_VALUES,
    ) -> str:
        """Record a measurement that raised as a FAILED run (tag ``dataeff.error``); a re-run tries it again."""
        exp_id = self.study_experiment(study)
        all_tags = {TAG_KIND: kind, "dataeff.error": error, TAG_NOTE: f"failed: {error}", **dict(tags)}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        return self._runs.log_failed(exp_id, key=key, run_name=run_name, tags=all_tags, params=params)

    @guarded
    def read_run_json(self, run_id: str, artifact_file: str) -> Any | None:
        """A JSON artifact of a run, or ``None`` when the run has no such file."""
        return self._runs.read_json(run_id, artifact_file)

    @guarded
    def log_run_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        """Store ``data`` (redacted) as the JSON artifact ``artifact_file`` of a run."""
        self._runs.log_json(run_id, data, artifact_file)

    @guarded
    def list_study_runs(self, study: str, *, include_unfinished: bool = True) -> list[dict]:
        """Every run of a study (newest first) as plain records (see :meth:`list_runs`)."""
        exp_id = self._runs.existing_experiment(study)
        if exp_id is None:
            return []
        flt = "" if include_unfinished else "attributes.status = 'FINISHED'"
        return [_run_record(r) for r in self._runs.search(exp_id, flt, view=ViewType.ALL)]


@dataclasses.dataclass(frozen=True)
class ProjectTracker:
    """A :class:`Tracker` bound to one annotation project and model: the project's runs without
    repeating ``(project, model)`` on every call. Each method is the :class:`Tracker` method of the
    same name."""

    tracker: Tracker
    project: str
    model: str

    def read_bootstrap(self) -> dict[str, list[str]] | None:
        return self.tracker.read_bootstrap(self.project, self.model)

    def log_bootstrap(
        self,
        roles: Mapping[str, Sequence[str]],
        stats: Mapping[str, Any],
        scores: Sequence[ConfidenceScore],
        figure=None,
    ) -> LoggedRun:
        return self.tracker.log_bootstrap(self.project, self.model, roles, stats, scores, figure=figure)

    def latest_estimate(self) -> dict | None:
        return self.tracker.latest_estimate(self.project, self.model)

    def stored_coslow(self, label_hash: str) -> CosLowResult | None:
        """The CoS-Low result of the newest estimate when it was made from exactly these labels, else ``None``.

        A stored result that does not fit :class:`CosLowResult` (written by an older version) is
        ``None`` too, with a warning: it is computed again.
        """
        latest = self.latest_estimate()
        if not latest or latest.get("label_hash") != label_hash or not latest.get("coslow_result"):
            return None
        try:
            return CosLowResult.from_dict(latest["coslow_result"])
        except DataError as exc:
            logger.warning("%s: the stored CoS-Low of run %s is not reusable (%s)", self.project, latest["run_id"], exc)
            return None

    def log_estimate(
        self,
        label_hash: str,
        coslow: CosLowResult,
        prediction: Prediction,
        targets: Sequence[float],
        *,
        figure=None,
        tables: Mapping[str, Sequence[Mapping] | Mapping[str, Sequence]] | None = None,
        needs: Mapping[float, LabelsNeeded] | None = None,
        needs_from: str | None = None,
        datasets: Sequence[DatasetRef] = (),
    ) -> LoggedRun:
        return self.tracker.log_estimate(
            self.project,
            self.model,
            label_hash,
            coslow,
            prediction,
            targets,
            figure=figure,
            tables=tables,
            needs=needs,
            needs_from=needs_from,
            datasets=datasets,
        )

    def log_finetune(
        self,
        label_hash: str,
        result: FinetuneResult,
        adapter_dir: str | os.PathLike | None = None,
        *,
        datasets: Sequence[DatasetRef] = (),
        system: Sequence[Sample] = (),
    ) -> LoggedRun:
        return self.tracker.log_finetune(
            self.project, self.model, label_hash, result, adapter_dir, datasets=datasets, system=system
        )

    def begin_iteration(self, iteration_key: str, labeled: int) -> None:
        self.tracker.begin_iteration(self.project, self.model, iteration_key, labeled)

    def end_iteration(self, metrics: Mapping[str, Any] = NO_VALUES, status: str = "FINISHED") -> str | None:
        return self.tracker.end_iteration(self.project, metrics, status)

    def finetuned_budgets(self) -> dict[int, float]:
        return self.tracker.finetuned_budgets(self.project, self.model)

    def log_predicted(self, run_id: str, median: float, lo: float, hi: float) -> dict[str, float]:
        return self.tracker.log_predicted(run_id, median, lo, hi)

    def log_decision(
        self,
        iteration_key: str,
        decision: Decision,
        summary: Mapping[str, Any] | None = None,
        *,
        needs: Mapping[float, LabelsNeeded] | None = None,
        needs_from: str | None = None,
    ) -> LoggedRun:
        return self.tracker.log_decision(
            self.project,
            iteration_key,
            decision,
            model=self.model,
            summary=summary,
            needs=needs,
            needs_from=needs_from,
        )

    def read_cursor(self) -> dict | None:
        return self.tracker.read_cursor(self.project)

    def log_cursor(self, cursor: Mapping) -> str:
        return self.tracker.log_cursor(self.project, cursor)

    def update_comparison(
        self,
        figure,
        table_rows: Sequence[Mapping],
        *,
        measured: Mapping[int, float] | None = None,
        predicted: Mapping[int, Sequence[float]] | None = None,
    ) -> str:
        return self.tracker.update_comparison(self.project, figure, table_rows, measured=measured, predicted=predicted)

    def list_runs(self, kind: str | None = None, *, include_unfinished: bool = False) -> list[dict]:
        return self.tracker.list_runs(self.project, kind, include_unfinished=include_unfinished)
