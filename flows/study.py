"""``dataeff study``: measure CoS-Low and LoRA learning curves on several tasks, fit the family's calibration.

A plain function (no Prefect), so it runs anywhere MLflow's client does, a GPU box included.
MLflow is the study's memory: one experiment per study, one parent run per task (kind
``study-task``; the pool's confidence scores are cached on it as ``confidence.json``), a child run
per CoS-Low statistic (``study-coslow``: low-confidence and random) and per fine-tune
(``study-finetune``), and one ``study-summary`` run with the report. Each run is keyed by its inputs
(study, task, model, dtype, budget, seed, hash of the training labels, hash of the settings), so an
interrupted study resumes where it stopped and a re-run of a finished study writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tqdm.auto import tqdm

from dataeff import __version__
from dataeff.calibration import Calibration
from dataeff.confidence import ConfidenceScore, select_low_confidence
from dataeff.coslow import compute_coslow
from dataeff.errors import DataError
from dataeff.finetune import FinetuneSettings, nested_subset, run_finetune
from dataeff.iteration import label_set_hash
from dataeff.models import LoadedModel, dtype_name, load_model, resolve_device, resolve_dtype
from dataeff.study import (
    PreparedTask,
    StudySettings,
    TaskResult,
    catch_warnings_as_messages,
    chance_level,
    majority_score,
    prepare_task,
    random_sample,
    restrict_result,
)
from dataeff.study_report import StudyFit, fit_study, render_markdown
from flows.runners import ModelSpec, Pending, Runner, ShardedScores, UnitInfo, make_runner, submit_pool_scoring
from integrations.mlflow_tracking import Tracker, run_key

CONFIDENCE_JSON = "confidence.json"
TASK_JSON = "task_result.json"
COSLOW_JSON = "coslow.json"
FINETUNE_JSON = "finetune.json"
SUMMARY_JSON = "summary.json"

OnRun = Callable[[dict], None]


def _dtype_label(settings: StudySettings) -> str:
    return dtype_name(resolve_dtype(resolve_device(settings.device), settings.dtype))


class _Model:
    """Loads the model on first use only: a resumed, finished study never loads it."""

    def __init__(self, settings: StudySettings, loaded: LoadedModel | None) -> None:
        self.settings, self.loaded = settings, loaded

    def get(self) -> LoadedModel:
        if self.loaded is None:
            tqdm.write(f"loading {self.settings.model} ...", file=sys.stderr)
            self.loaded = load_model(self.settings.model, device=self.settings.device, dtype=self.settings.dtype)
        return self.loaded


def finetune_unit(loaded: LoadedModel, pool, eval_examples, spec, budget: int, fs) -> tuple[dict, dict]:
    """A unit of the study (any runner): one LoRA fine-tune at ``budget`` -> ``(data, metrics)`` of its run."""
    res = run_finetune(loaded, pool, eval_examples, spec, budget, fs, progress=False)
    data = {**res.as_dict(), "predictions": res.predictions, "seconds": res.seconds_train + res.seconds_eval}
    metrics = {
        "score": res.score,
        "seconds": data["seconds"],
        "seconds_train": res.seconds_train,
        "seconds_eval": res.seconds_eval,
        "train_loss": res.final_loss,
        "steps": res.steps,
    }
    return data, metrics


def coslow_unit(loaded: LoadedModel, examples, which: str, s: StudySettings) -> tuple[dict, dict]:
    """A unit of the study (any runner): CoS-Low of ``examples`` over the study's draws -> ``(data, metrics)``."""
    res, warn = catch_warnings_as_messages(
        compute_coslow,
        loaded,
        examples,
        lora=s.lora,
        seed=s.coslow_seed,
        draws=s.draws,
        chat_template=s.chat_template,
        batch_size=s.coslow_batch_size,
        progress=False,
    )
    data = {**res.as_dict(), "which": which, "ids": [e.id for e in examples], "warnings": warn}
    metrics = {
        "coslow": res.coslow,
        "coslow_mean": res.mean,
        "coslow_std": res.std,
        "seconds": res.seconds,
        **{f"coslow_draw_{d}": v for d, v in enumerate(res.draws)},
    }
    return data, metrics


class _Study:
    def __init__(
        self,
        settings: StudySettings,
        tracker: Tracker,
        model: _Model,
        progress: bool,
        on_run: OnRun | None,
        results_dir: Path | None = None,
        runner: Runner | None = None,
    ):
        self.s, self.tracker, self.model, self.progress, self.on_run = settings, tracker, model, progress, on_run
        self.results_dir = results_dir
        self.runner: Runner = runner if runner is not None else make_runner("local", load=lambda _spec: model.get())
        self.spec = ModelSpec(settings.model, settings.device, settings.dtype)
        self.pending: dict[str, Pending] = {}  # run key -> submitted unit (parallel runners)
        self.scoring: dict[str, ShardedScores] = {}  # task name -> its pool's confidence, submitted
        self.last_unit: UnitInfo | None = None
        self.name = settings.study_name
        self.dtype = _dtype_label(settings)
        self.device = str(resolve_device(settings.device))
        self.written = 0

    def base(self, task: PreparedTask) -> dict:
        return {"study": self.name, "task": task.name, "model": self.s.model, "dtype": self.dtype}

    def tags(self, task: PreparedTask) -> dict:
        return {
            "dataeff.study": self.name,
            "dataeff.task": task.name,
            "dataeff.model": self.s.model,
            "dataeff.dtype": self.dtype,
            "dataeff.device": self.device,
        }

    def _child(self, task, parent, done, key, kind, run_name, compute, *, params=None, event=None):
        """Stored data of a FINISHED child with ``key``, else a result kept in ``results_dir`` by an earlier
        (interrupted) run on another machine, else ``compute()`` -> (data, metrics); logged either way."""
        kept_path = self._child_path(task, key)
        if key in done:
            data = self.tracker.read_run_json(
                done[key]["run_id"], COSLOW_JSON if kind == "study-coslow" else FINETUNE_JSON
            )
            if data is not None:
                if kept_path is not None and not kept_path.is_file():  # a run from before --results: keep it too
                    metrics = dict(done[key].get("metrics", {}))
                    _write_json(kept_path, {"key": key, "data": data, "metrics": metrics})
                return data
        kept = _read_json(kept_path) if kept_path is not None else None
        carried = kept is not None and kept.get("key") == key
        if kept is not None and carried:
            data, metrics = kept["data"], kept["metrics"]
        else:
            self.last_unit = None
            data, metrics = compute()
            if kept_path is not None:
                _write_json(kept_path, {"key": key, "data": data, "metrics": metrics})
        logged = self.tracker.log_study_run(
            self.name,
            key=key,
            kind=kind,
            run_name=run_name,
            parent_run_id=parent,
            tags=self.tags(task),
            params=params or {},
            metrics=metrics,
            data=data,
            artifact_file=COSLOW_JSON if kind == "study-coslow" else FINETUNE_JSON,
        )
        self.written += int(logged.created)
        if self.on_run is not None:
            unit = {}
            if not carried and self.last_unit is not None:  # where it was computed (tests: parallel workers)
                info = self.last_unit
                unit = {"unit": {"runner": info.runner, "pid": info.pid, "started": info.started, "ended": info.ended}}
            self.on_run(
                {
                    "task": task.name,
                    "kind": kind,
                    "created": logged.created,
                    "carried": carried,
                    "run_id": logged.run_id,
                    **unit,
                    **(event or {}),
                }
            )
        return data

    def _unit(self, key: str, fn, *args) -> tuple[dict, dict]:
        """``(data, metrics)`` of the unit of ``key``: submitted earlier (:meth:`prefetch`) or now."""
        job = self.pending.pop(key, None)
        if job is None:
            job = self.runner.submit(fn, self.spec, *args)
        try:
            return job.result()
        finally:
            self.last_unit = job.info

    def _coslow_key(self, task: PreparedTask, which: str, examples) -> str:
        s = self.s
        return run_key(
            kind="study-coslow",
            which=which,
            **self.base(task),
            labels=label_set_hash(examples),
            lora=s.lora.as_dict(),
            draws=s.draws,
            seed=s.coslow_seed,
            chat_template=s.chat_template,
        )

    def _finetune_plan(
        self, task: PreparedTask, units, eval_hash: str
    ) -> list[tuple[int, int, FinetuneSettings, str, str]]:
        """``(budget, seed, settings, run key, train hash)`` of each fine-tune of ``units``."""
        plan = []
        for budget, seed in units:
            fs = self.s.finetune_for(seed)
            fs_key = {k: v for k, v in fs.as_dict().items() if k != "device"}
            train_hash = label_set_hash(nested_subset(task.pool, budget, seed))
            key = run_key(
                kind="study-finetune",
                **self.base(task),
                budget=budget,
                seed=seed if budget else None,
                train=train_hash,
                eval=eval_hash,
                settings=fs_key,
                spec=[task.spec.labels, task.spec.metric],
            )
            plan.append((budget, seed, fs, key, train_hash))
        return plan

    def units(self, task: PreparedTask) -> list[tuple[int, int]]:
        return [(b, seed) for b in task.budgets for seed in (self.s.seeds[:1] if b == 0 else self.s.seeds)]

    def prefetch(self, task: PreparedTask, done: dict) -> int:
        """Submit the pool's confidence, then every fine-tune and the random CoS-Low of ``task`` not yet in
        MLflow or kept (parallel runners); returns how many units.

        The fine-tunes do not depend on the pool's confidence, so all tasks' units run at once on the
        workers while the driver goes through the tasks in order and logs each result as it takes it.
        """
        if not self.runner.parallel:
            return 0
        path = self._result_path(task)
        if path is not None and path.is_file():  # a kept task result: maybe nothing to measure; no guessing
            return 0

        def needed(key: str) -> bool:
            kept = self._child_path(task, key)
            if key in done or key in self.pending:
                return False
            data = _read_json(kept) if kept is not None else None
            return not (data is not None and data.get("key") == key)

        randoms = random_sample(task.pool, self.s.k, self.s.split_seed)
        units: list[tuple[str, Callable, tuple]] = []
        key = self._coslow_key(task, "random", randoms)
        if needed(key):
            units.append((key, coslow_unit, (randoms, "random", self.s)))
        for budget, _seed, fs, key, _ in self._finetune_plan(task, self.units(task), label_set_hash(task.eval)):
            if needed(key):
                units.append((key, finetune_unit, (task.pool, task.eval, task.spec, budget, fs)))
        if not units:  # every child measured: at most CoS-Low of the low-confidence draw is left
            return 0
        # first the pool's confidence (the driver needs it first, for the low-confidence draw); if it turns out
        # to be cached on the task's run already (a resumed task), it is cancelled there
        self.scoring[task.name] = self._submit_scoring(task)
        for key, fn, args in units:
            self.pending[key] = self.runner.submit(fn, self.spec, *args)
        return len(units) + len(self.scoring[task.name].jobs)

    def _submit_scoring(self, task: PreparedTask) -> ShardedScores:
        s = self.s
        return submit_pool_scoring(
            self.runner,
            self.spec,
            task.pool,
            batch_size=s.confidence_batch_size,
            max_new_tokens=s.max_new_tokens,
            chat_template=s.chat_template,
            stop_strings=None if s.chat_template else ("\n",),
        )

    def discard(self) -> None:
        """Cancel units submitted and never taken (an interrupted study)."""
        for job in self.pending.values():
            cancel = getattr(job, "cancel", None)
            if cancel is not None:
                cancel()
        for scoring in self.scoring.values():
            scoring.cancel()
        self.pending.clear()
        self.scoring.clear()

    # ------------------------------------------------------------------ one task

    def run_task(self, task: PreparedTask, position: str) -> TaskResult:
        s, tracker = self.s, self.tracker
        split_hash = label_set_hash([*task.pool, *task.eval])
        eval_hash = label_set_hash(task.eval)
        human = s.human_scores.get(task.name)

        def key_for(budgets: list[int], cutoff: int) -> str:
            return run_key(
                kind="study-task",
                **self.base(task),
                split=split_hash,
                method=s.method_hash(),
                budgets=list(budgets),
                seeds=list(s.seeds),
                cutoff=cutoff,
                human=human,
            )

        parent_key = key_for(list(task.budgets), s.cutoff)
        params = {
            "task": task.name,
            "source": task.source,
            "n_pool": len(task.pool),
            "n_eval": len(task.eval),
            "budgets": list(task.budgets),
            "dropped_budgets": list(task.dropped) or None,
            "seeds": list(s.seeds),
            "metric": task.spec.metric,
            "k": s.k,
            "draws": s.draws,
            "cutoff": s.cutoff,
            "dtype": self.dtype,
            "device": self.device,
            "model": s.model,
        }
        parent, state = tracker.start_study_task(
            self.name,
            parent_key,
            run_name=f"task-{task.name}",
            tags={"dataeff.kind": "study-task", **self.tags(task)},
            params=params,
        )
        self.written += int(state == "created")
        for m in task.messages:
            tqdm.write(f"{task.name}: {m}", file=sys.stderr)
        if state == "finished":
            stored = tracker.read_run_json(parent, TASK_JSON)
            if stored is not None:
                tqdm.write(f"task {position} {task.name}: already measured (run {parent})", file=sys.stderr)
                return TaskResult.from_dict(stored)
        kept = self._kept_result(task, parent_key, key_for, human)
        if kept is not None:  # measured in an earlier session (another MLflow store): log it, do not measure again
            tqdm.write(
                f"task {position} {task.name}: measured before, logged from {self._result_path(task)}", file=sys.stderr
            )
            tracker.finish_study_task(
                parent,
                metrics=_task_metrics(kept),
                data=kept.as_dict(),
                artifact_file=TASK_JSON,
                status="FINISHED",
                tags={"mlflow.note.content": _note(kept)},
            )
            return kept
        result = TaskResult(
            task=task.name,
            source=task.source,
            n_pool=len(task.pool),
            n_eval=len(task.eval),
            metric=task.spec.metric,
            chance=chance_level(task.spec, task.eval),
            majority=majority_score(task.pool, task.eval, task.spec),
            budgets=list(task.budgets),
            dropped=list(task.dropped),
            cutoff=s.cutoff,
            messages=list(task.messages),
        )
        units = self.units(task)
        done = tracker.finished_study_runs(self.name)
        bar = tqdm(
            total=3 + len(units),
            desc=f"{position} {task.name}",
            unit="step",
            file=sys.stderr,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            seconds = self._measure(task, result, parent, done, units, bar, eval_hash)
            result.seconds = seconds
            result.finish(human)
            status = "FAILED" if result.failures else "FINISHED"
            tracker.finish_study_task(
                parent,
                metrics=_task_metrics(result),
                data=result.as_dict(),
                artifact_file=TASK_JSON,
                status=status,
                tags={"mlflow.note.content": _note(result)},
            )
            if not result.failures:
                self._keep_result(task, parent_key, result)
        except BaseException:
            tracker.end_run(parent, "KILLED")
            raise
        finally:
            bar.close()
        return result

    def _result_path(self, task: PreparedTask) -> Path | None:
        return self.results_dir / f"{task.name}.json" if self.results_dir is not None else None

    def _kept_result(self, task: PreparedTask, key: str, key_for, human: float | None) -> TaskResult | None:
        """A finished task's result kept in ``results_dir`` under the same key (inputs), else ``None``.

        A result kept for a *larger* grid of the same measurement (same split, method, seeds; its key
        recomputed from its own budgets and cut-off matches) is reused restricted to this grid, its AUC
        recomputed at this study's cut-off: shrinking the grid never re-measures a budget.
        """
        path = self._result_path(task)
        data = _read_json(path) if path is not None else None
        if data is None:
            return None
        kept = TaskResult.from_dict(data["result"])
        if data.get("key") == key:
            return kept
        if not set(task.budgets) <= set(kept.budgets) or data.get("key") != key_for(kept.budgets, kept.cutoff):
            return None
        return restrict_result(kept, task.budgets, task.dropped, self.s.cutoff, human)

    def _keep_result(self, task: PreparedTask, key: str, result: TaskResult) -> None:
        path = self._result_path(task)
        if path is not None:
            _write_json(path, {"key": key, "result": result.as_dict()})
            shutil.rmtree(path.with_suffix(""), ignore_errors=True)  # the task's kept children: superseded

    def _child_path(self, task: PreparedTask, key: str) -> Path | None:
        """Where a measured child (CoS-Low, fine-tune) is kept until its task finishes: ``<results>/<task>/<hash>.json``."""
        if self.results_dir is None:
            return None
        return self.results_dir / task.name / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".json")

    def _measure(self, task, result, parent, done, units, bar, eval_hash) -> float:
        s, tracker = self.s, self.tracker
        # 1. confidence over the pool (cached on the parent run)
        cached = tracker.read_run_json(parent, CONFIDENCE_JSON)
        pool_hash = label_set_hash(task.pool)
        if cached is None or cached.get("pool") != pool_hash:
            bar.set_postfix_str("confidence")
            job = self.scoring.pop(task.name, None) or self._submit_scoring(task)
            fresh = job.result()
            cached = {"pool": pool_hash, "seconds": job.seconds, "scores": [x.as_dict() for x in fresh]}
            tracker.log_run_json(parent, cached, CONFIDENCE_JSON)
        else:
            stale = self.scoring.pop(task.name, None)  # submitted before the cache was seen (a resumed task)
            if stale is not None:
                stale.cancel()
        scores = [ConfidenceScore(**{**r, "perplexity": float(r["perplexity"])}) for r in cached["scores"]]
        seconds = float(cached.get("seconds") or 0.0)
        bar.update(1)
        ids, msgs = catch_warnings_as_messages(
            select_low_confidence, scores, k=s.k, fraction=s.fraction, seed=s.split_seed
        )
        result.messages += msgs
        by_id = {e.id: e for e in task.pool}
        samples = {"low": [by_id[i] for i in ids], "random": random_sample(task.pool, s.k, s.split_seed)}
        # 2. CoS-Low of the low-confidence and the random draws
        for which, examples in samples.items():
            bar.set_postfix_str(f"CoS-Low {which}")
            key = self._coslow_key(task, which, examples)

            def compute(examples=examples, which=which, key=key):
                return self._unit(key, coslow_unit, examples, which, s)

            data = self._child(
                task,
                parent,
                done,
                key,
                "study-coslow",
                f"coslow-{which}-{task.name}",
                compute,
                params={
                    "which": which,
                    "k": len(examples),
                    "draws": s.draws,
                    "lora_r": s.lora.r,
                    "lora_alpha": s.lora.alpha,
                    "seed": s.coslow_seed,
                },
                event={"which": which},
            )
            setattr(
                result,
                f"coslow_{which}",
                {k: data.get(k) for k in ("coslow", "draws", "mean", "std", "n_examples", "seconds", "seed", "ids")},
            )
            seconds += float(data.get("seconds") or 0.0)
            bar.update(1)
        # 3. fine-tunes on the grid
        for budget, seed, fs, key, train_hash in self._finetune_plan(task, units, eval_hash):
            bar.set_postfix_str(f"budget {budget} seed {seed}")

            def compute(budget=budget, fs=fs, key=key):
                return self._unit(key, finetune_unit, task.pool, task.eval, task.spec, budget, fs)

            params = {
                "budget": budget,
                "seed": seed,
                "n_eval": len(task.eval),
                "lr": fs.lr,
                "epochs": fs.epochs,
                "batch_size": fs.batch_size,
                "max_steps": fs.max_steps,
                "lora_r": fs.lora.r,
                "lora_alpha": fs.lora.alpha,
                "label_hash": train_hash,
            }
            try:
                data = self._child(
                    task,
                    parent,
                    done,
                    key,
                    "study-finetune",
                    f"finetune-{task.name}-{budget}-s{seed}",
                    compute,
                    params=params,
                    event={"budget": budget, "seed": seed},
                )
            except Exception as exc:  # noqa: BLE001 - one failing fine-tune must not stop the study
                error = f"{type(exc).__name__}: {exc}"[:1000]
                tqdm.write(f"{task.name}: fine-tune at budget {budget}, seed {seed} failed: {error}", file=sys.stderr)
                result.failures.append({"budget": budget, "seed": seed, "error": error})
                self.tracker.log_study_failure(
                    self.name,
                    key=key,
                    kind="study-finetune",
                    error=error,
                    parent_run_id=parent,
                    run_name=f"finetune-{task.name}-{budget}-s{seed}",
                    tags=self.tags(task),
                    params=params,
                )
                bar.update(1)
                continue
            result.scores.setdefault(budget, {})[seed] = float(data["score"])
            seconds += float(data.get("seconds") or 0.0)
            bar.update(1)
        return seconds


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _task_metrics(result: TaskResult) -> dict:
    metrics = {
        "auc": result.auc,
        "ceiling": result.ceiling,
        "chance": result.chance,
        "majority": result.majority,
        "seconds": result.seconds,
        "n_failures": len(result.failures),
    }
    for b, m in result.means().items():
        metrics[f"score_mean_{b}"] = m
        metrics[f"score_sd_{b}"] = result.sds()[b]
    for which, res in (("low", result.coslow_low), ("random", result.coslow_random)):
        if res:
            metrics[f"coslow_{which}"] = res.get("mean")
            metrics[f"coslow_{which}_std"] = res.get("std")
    return metrics


def _note(r: TaskResult) -> str:
    parts = [f"AUC {r.auc:.3f}" if r.auc is not None else "AUC undefined"]
    if r.coslow_low:
        parts.append(f"CoS-Low {r.coslow_low.get('mean', float('nan')):.3f}")
    if r.failures:
        parts.append(f"{len(r.failures)} fine-tune(s) failed")
    return "; ".join(parts)


def default_calibration_path(family: str) -> Path:
    """``$DATAEFF_HOME/calibrations/<family>.json`` (``./.dataeff`` when unset)."""
    from dataeff.project import dataeff_home

    return dataeff_home() / "calibrations" / f"{family}.json"


def run_study(
    settings: StudySettings,
    tracker: Tracker,
    *,
    out: str | Path | None = None,
    calibration_out: str | Path | None = None,
    loaded: LoadedModel | None = None,
    progress: bool = True,
    on_run: OnRun | None = None,
    command: str | None = None,
    results_dir: str | Path | None = None,
    runner: Runner | None = None,
) -> dict:
    """Run (or resume) a calibration study; write the report and the calibration file.

    Args:
        settings: what to measure (tasks, grid, seeds, model, ...).
        tracker: where the study lives (MLflow); required for resuming.
        out: markdown report path (e.g. ``docs/study.md``); ``None``: not written.
        calibration_out: calibration JSON path; ``None``: :func:`default_calibration_path`.
        loaded: an already loaded model (tests); otherwise loaded on first need.
        progress: a tqdm bar with an ETA per task on stderr.
        on_run: called after each child run is logged (or found) with ``{"task", "kind", "created", ...}``.
        command: the command line, recorded in the provenance.
        results_dir: a folder (e.g. committed with the report) where each finished task's result is
            kept as ``<task>.json`` with its key; a study resumed against another MLflow store (a
            new machine) takes those tasks from there instead of measuring them again.
        runner: where fine-tunes, CoS-Low and confidence shards run (:mod:`flows.runners`); ``None``:
            this process, one after another. A parallel runner (Ray) gets every fine-tune of every task
            at once; the driver still logs each run itself, in the same order and under the same keys,
            so the runs and numbers are those of the local runner and a re-run writes nothing.

    Returns:
        ``{"study", "tasks", "fit", "markdown", "calibration_file", "report_file", "runs_written", ...}``.

    Raises:
        DataError: an unknown task, a task too small for its eval split, no tasks - before anything
            is measured. A failing fine-tune does not raise: it is reported and the rest goes on.
    """
    # MLflow's own per-download bars would interleave with the per-task bar.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not settings.tasks:
        raise DataError("study: give at least one task (--tasks name1,name2 or labeled JSONL paths)")
    prepared = [prepare_task(t, settings) for t in settings.tasks]  # every task error before any model work
    names = [p.name for p in prepared]
    if len(set(names)) != len(names):
        raise DataError(f"study: two tasks share a name ({names}); rename one of the files")
    study = _Study(
        settings,
        tracker,
        _Model(settings, loaded),
        progress,
        on_run,
        Path(results_dir) if results_dir is not None else None,
        runner,
    )
    tracker.study_experiment(study.name, model=settings.model)
    try:
        if study.runner.parallel:
            done = tracker.finished_study_runs(study.name)
            submitted = sum(study.prefetch(task, done) for task in prepared)
            tqdm.write(f"{submitted} unit(s) submitted to the {study.runner.name} runner", file=sys.stderr)
        results = [study.run_task(task, f"[{i + 1}/{len(prepared)}]") for i, task in enumerate(prepared)]
    finally:
        study.discard()

    family = settings.family_name
    summary_key = run_key(
        kind="study-summary",
        report=REPORT_VERSION,
        study=study.name,
        method=settings.method_hash(),
        settings={k: v for k, v in settings.as_dict().items() if k not in ("device",)},
        results=[r.as_dict() for r in results],
    )
    done = tracker.finished_study_runs(study.name)
    if summary_key in done:
        stored = tracker.read_run_json(done[summary_key]["run_id"], SUMMARY_JSON) or {}
        markdown = stored.get("markdown", "")
        cal = Calibration.from_json(_json(stored["calibration"])) if stored.get("calibration") else None
        fit_dict = stored.get("fit", {})
    else:
        provenance = {
            "study": study.name,
            "model": settings.model,
            "family": family,
            "dtype": study.dtype,
            "device": study.device,
            "lora": settings.lora.as_dict(),
            "finetune": settings.finetune.as_dict(),
            "budgets": list(settings.budgets),
            "seeds": list(settings.seeds),
            "eval_size": settings.eval_size,
            "draws": settings.draws,
            "k": settings.k,
            "fraction": settings.fraction,
            "max_pool": settings.max_pool,
            "cutoff_N": settings.cutoff,
            "ceiling": "max(human score, best mean score)",
            "chat_template": settings.chat_template,
            "coslow": "mean over LoRA draws of the low-confidence statistic",
            "tasks": [
                {
                    "task": p.name,
                    "source": p.source,
                    "n_pool": len(p.pool),
                    "n_eval": len(p.eval),
                    "budgets": list(p.budgets),
                    "dropped": list(p.dropped),
                }
                for p in prepared
            ],
            "tracking_uri": tracker.display_uri,
            "command": command,
            "dataeff_version": __version__,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        fit: StudyFit = fit_study(
            results,
            family,
            settings,
            provenance=provenance,
            source=f"dataeff study {study.name}: LoRA fine-tune curves of {', '.join(names)}",
        )
        cal, fit_dict = fit.calibration, fit.as_dict()
        markdown = render_markdown(results, settings, fit, provenance=provenance)
        metrics = {}
        if cal is not None:
            metrics = {
                "coef": cal.coef,
                "intercept": cal.intercept,
                "loo_mae": cal.loo_mae,
                "baseline_loo_mae": cal.baseline_loo_mae,
                "loo_relative_error": cal.loo_relative_error,
            }
        for which in ("low", "random"):
            for kind in ("pearson", "spearman"):
                metrics[f"{kind}_{which}"] = (fit.correlations.get(which) or {}).get(kind)
        logged = tracker.log_study_run(
            study.name,
            key=summary_key,
            kind="study-summary",
            run_name="summary",
            tags={
                "dataeff.study": study.name,
                "dataeff.family": family,
                "mlflow.note.content": fit.note or "calibration fitted",
            },
            params={"family": family, "tasks": names, "n_tasks": len(names)},
            metrics=metrics,
            data={
                "markdown": markdown,
                "fit": fit_dict,
                "calibration": cal.as_dict() if cal else None,
                "tasks": [r.as_dict() for r in results],
                "provenance": provenance,
            },
            artifact_file=SUMMARY_JSON,
            texts={"study.md": markdown},
        )
        study.written += int(logged.created)
        if cal is not None:
            tracker.log_calibration(family, cal.as_dict())
    report = None
    if out is not None:
        report = Path(out)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(markdown, encoding="utf-8")
    cal_file = None
    if cal is not None:
        cal_file = cal.save(Path(calibration_out) if calibration_out else default_calibration_path(family))
    return {
        "study": study.name,
        "family": family,
        "model": settings.model,
        "dtype": study.dtype,
        "device": study.device,
        "cutoff_N": settings.cutoff,
        "ceiling": "max(human score, best mean score)",
        "tasks": [_task_summary(r) for r in results],
        "fit": fit_dict,
        "calibration_file": str(cal_file) if cal_file else None,
        "report_file": str(report) if report else None,
        "runs_written": study.written,
        "tracking_uri": tracker.display_uri,
    }


REPORT_VERSION = 3
"""Version of the summary (fit, report, calibration fields): a new one refits a finished study's summary
(2: the calibration records its N, the report the best - majority column; 3: the resolved dtype)."""


def _json(obj) -> str:
    import json

    return json.dumps(obj)


def _task_summary(r: TaskResult) -> dict:
    def clean(x):
        return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x

    return {
        "task": r.task,
        "n_pool": r.n_pool,
        "n_eval": r.n_eval,
        "chance": clean(r.chance),
        "majority": clean(r.majority),
        "means": {str(b): m for b, m in r.means().items()},
        "sds": {str(b): v for b, v in r.sds().items()},
        "auc": clean(r.auc),
        "ceiling": clean(r.ceiling),
        "auc_note": r.auc_note,
        "coslow_low": (r.coslow_low or {}).get("mean"),
        "coslow_low_std": (r.coslow_low or {}).get("std"),
        "coslow_random": (r.coslow_random or {}).get("mean"),
        "dropped": r.dropped,
        "failures": r.failures,
        "seconds": r.seconds,
        "messages": r.messages,
    }
