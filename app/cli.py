"""The ``dataeff`` command: one tree, grouped by what the user is doing.

Method commands print JSON on stdout (progress bars go to stderr), so they compose with ``jq``.
Project commands (create, bootstrap, loop, serve, demo) talk to Label Studio, MLflow and Prefect
through ``flows/``, imported only when such a command runs.

Every deliberate error prints ``error: <what and how to fix>`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dataeff.defaults import CALIBRATION, GRAM_STORAGES, LABEL_CAP, PRIMARY_TARGET, TARGETS
from dataeff.errors import DataEffError

EPILOG = """\
typical session (the paper's method, on the offline SmolLM2-135M-Instruct):
  dataeff data bigbench sports_understanding --out data/sports     # pool.jsonl + eval.jsonl
  dataeff confidence --model smollm2 --data data/sports/pool.jsonl --out scores.jsonl --select-low 32
  dataeff coslow --model smollm2 --data lowconf-labeled.jsonl --draws 3
  dataeff predict --coslow 0.65 --calibration llama-3.1-8b-instruct --target 0.8 0.9
the annotation loop (Label Studio + MLflow + Prefect):
  dataeff demo                       # everything local, a simulated annotator, a summary at the end
  dataeff project create --name tickets --data tickets.jsonl --labels labels.txt
  dataeff bootstrap tickets && dataeff loop tickets && dataeff serve --interval 900
"""


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o):
    if hasattr(o, "as_dict"):
        return o.as_dict()
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _float_list(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


# ----------------------------------------------------------------------------- method commands


def cmd_auc(args) -> int:
    from dataeff.efficiency import data_efficiency_auc, read_results

    results = read_results(args.results, metric=args.metric, require_zero_shot=not args.allow_missing_zero_shot)
    auc = data_efficiency_auc(results, human_score=args.human_score, max_budget=args.max_budget)
    out = {"auc": auc, "budgets": sorted(results), "human_score": args.human_score, "max_budget": args.max_budget}
    if 0 not in results:
        out["note"] = "no zero-shot point: the curve starts at its first budget, as the reference computes it"
    _print_json(out)
    return 0


def _calibration_from_args(args):
    from dataeff.calibration import Calibration, get_calibration

    if args.coef is not None:
        return Calibration(
            family="custom", coef=args.coef[0], intercept=args.coef[1], source="--coef on the command line"
        )
    return get_calibration(args.calibration)


def cmd_predict(args) -> int:
    from dataeff.efficiency import predict

    cal = _calibration_from_args(args).at_cutoff(args.max_budget)
    auc, lo, hi = cal.predict_auc(args.coslow, level=args.level)
    pred = predict(
        args.coslow,
        cal.coef,
        cal.intercept,
        targets=_float_list(args.target),
        max_budget=args.max_budget,
        auc_interval=(lo, hi),
    )
    out = pred.as_dict()
    out["calibration"] = {"family": cal.family, "source": cal.source, "interval_level": args.level}
    _print_json(out)
    return 0


def parse_measured(tokens) -> dict[int, float]:
    """``["0:0.117", "50:0.133"]`` -> ``{0: 0.117, 50: 0.133}``, with an error naming the bad token."""
    from dataeff.errors import DataError

    out: dict[int, float] = {}
    for tok in tokens or []:
        budget, sep, score = str(tok).partition(":")
        try:
            b, s = int(budget), float(score)
        except ValueError:
            raise DataError(f"--measured {tok!r}: write LABELS:SCORE, e.g. 0:0.117 (zero-shot) or 100:0.183") from None
        if not sep or b < 0:
            raise DataError(f"--measured {tok!r}: write LABELS:SCORE with LABELS >= 0, e.g. 100:0.183")
        if not 0.0 <= s <= 1.0:
            raise DataError(f"--measured {tok!r}: score {s} is outside [0, 1]; give accuracy/F1 as a fraction")
        if b in out:
            raise DataError(f"--measured: budget {b} is given twice ({b}:{out[b]} and {tok}); keep one")
        out[b] = s
    if not out:
        raise DataError("--measured: give at least the zero-shot score, e.g. --measured 0:0.117 50:0.133")
    if 0 not in out:
        raise DataError("--measured: no zero-shot point; measure the base model on the eval split and add 0:SCORE")
    return dict(sorted(out.items()))


def cmd_assess(args) -> int:
    from dataeff.errors import DataError
    from dataeff.policy import PolicySettings
    from dataeff.step import StepInputs, StepSettings, needs_table, step

    measured = parse_measured(args.measured)
    targets = _float_list(args.target)
    for t in (*targets, args.primary_target):
        if not 0.0 < t <= 1.0:
            raise DataError(f"target {t}: a target is a share of the achievable gain in (0, 1], e.g. 0.8")
    if args.human_score is not None and not 0.0 < args.human_score <= 1.0:
        raise DataError(f"--human-score {args.human_score}: must be a score in (0, 1]")
    cal = _calibration_from_args(args)
    defaults = PolicySettings()
    policy = PolicySettings(
        targets=targets,
        primary_target=args.primary_target,
        label_cap=args.label_cap or defaults.label_cap,
        budget_grid=tuple(sorted(set(args.budgets))) if args.budgets else defaults.budget_grid,
    )
    labeled = args.labeled if args.labeled is not None else max(measured)
    outcome = step(
        StepInputs(
            labeled=labeled, coslow=args.coslow, measured=measured, n_eval=args.n_eval, human_score=args.human_score
        ),
        cal,
        StepSettings(
            policy=policy,
            curve_model=args.curve_model,
            seed_noise=args.seed_noise,
            max_budget=args.max_budget,
            level=args.level,
        ),
    )
    a = outcome.assessed
    post = a.posterior
    _print_json(
        {
            "labels_needed": needs_table(outcome),
            "decision": outcome.decision.as_dict(),
            "p_within_cap": outcome.state.p_within_cap,
            "label_cap": policy.label_cap,
            "labeled": labeled,
            "zero_shot": a.zero_shot,
            "ceiling": a.ceiling,
            "ceiling_source": "human score (or the best score if higher)"
            if args.human_score is not None
            else "posterior median (no human score given)",
            "auc": post.auc_summary() if post is not None else {"median": a.prediction.auc},
            "prior": {"auc": a.prediction.auc, "labels_needed": a.prediction.as_dict()["labels_needed"]},
            "calibration": {"family": cal.family, "coef": cal.coef, "intercept": cal.intercept},
            "curve_model": args.curve_model,
            "measured": {str(b): s for b, s in measured.items()},
        }
    )
    return 0


def cmd_calibrate(args) -> int:
    from dataeff.calibration import fit_calibration, read_pairs_csv

    rows = read_pairs_csv(args.pairs)
    cal = fit_calibration(rows, family=args.family, fit_kind=args.fit_kind, source=f"fitted from {args.pairs}")
    if args.out:
        cal.save(args.out)
    _print_json(cal.as_dict() if hasattr(cal, "as_dict") else cal)
    return 0


def cmd_calibrations(args) -> int:
    from dataeff.calibration import builtin_calibrations

    _print_json({name: c.as_dict() for name, c in builtin_calibrations().items()})
    return 0


def _load(args):
    from dataeff.models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


def _within_bounds(loaded, examples, args, what: str) -> tuple[list, list[dict]]:
    """The examples within ``--max-prompt-tokens``/``--max-answer-tokens``; each other one named on stderr."""
    from dataeff.bounds import split_by_token_bounds

    kept, rejected = split_by_token_bounds(
        loaded.tokenizer,
        examples,
        max_prompt_tokens=args.max_prompt_tokens,
        max_answer_tokens=args.max_answer_tokens,
        chat_template=args.chat_template,
    )
    for item in rejected:
        print(f"skipped {what} item {item.id}: {item.reason}", file=sys.stderr)
    return kept, [{"id": item.id, "reason": item.reason} for item in rejected]


def cmd_confidence(args) -> int:
    from dataeff.confidence import score_confidence, select_low_confidence
    from dataeff.data import read_examples, write_jsonl

    loaded = _load(args)
    examples, skipped = _within_bounds(loaded, read_examples(args.data, require_answer=False), args, "pool")
    scores = score_confidence(
        loaded,
        examples=examples,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        chat_template=args.chat_template,
    )
    rows = [s.as_dict() if hasattr(s, "as_dict") else _json_default(s) for s in scores]
    write_jsonl(args.out, rows)
    summary = {
        "scored": len(rows),
        "out": str(args.out),
        "skipped": skipped,
        "batch_size": scores.batch_size,
        "decoder": scores.decoder,
    }
    if args.select_low:
        ids = select_low_confidence(scores, k=args.select_low, fraction=args.fraction, seed=args.seed, by=args.by)
        summary["low_confidence_ids"] = ids
    _print_json(summary)
    return 0


def cmd_select_low(args) -> int:
    from dataeff.confidence import ConfidenceScore, select_low_confidence

    rows = [json.loads(l) for l in Path(args.scores).read_text(encoding="utf-8").splitlines() if l.strip()]
    scores = [ConfidenceScore(**r) for r in rows]
    ids = select_low_confidence(scores, k=args.k, fraction=args.fraction, seed=args.seed, by=args.by)
    _print_json({"k": args.k, "fraction": args.fraction, "seed": args.seed, "ids": ids})
    return 0


def cmd_coslow(args) -> int:
    from dataeff.coslow import compute_coslow
    from dataeff.data import read_examples
    from dataeff.models import LoraSettings

    examples = read_examples(args.data)
    loaded = _load(args)
    lora = LoraSettings(
        r=args.lora_r,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        target_modules=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
    )
    res = compute_coslow(
        loaded,
        examples,
        lora=lora,
        seed=args.seed,
        draws=args.draws,
        chat_template=args.chat_template,
        batch_size=args.batch_size,
        projection_dim=args.projection_dim,
        storage=args.storage,
    )
    out = res.as_dict() if hasattr(res, "as_dict") else _json_default(res)
    out["model"] = loaded.name
    _print_json(out)
    return 0


def cmd_finetune(args) -> int:
    from dataeff.data import TaskSpec, read_examples
    from dataeff.finetune import FinetuneSettings, run_finetune

    loaded = _load(args)
    train, skipped_train = _within_bounds(loaded, read_examples(args.train), args, "training")
    evals, skipped_eval = _within_bounds(loaded, read_examples(args.eval), args, "eval")
    labels = tuple(l for l in args.labels.split(",") if l) if args.labels else None
    task = TaskSpec(name=Path(args.train).stem, labels=labels, metric=args.metric)
    settings = FinetuneSettings(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, chat_template=args.chat_template
    )
    res = run_finetune(loaded, train, evals, task, args.budget, settings, adapter_dir=args.adapter_dir)
    _print_json({**res.as_dict(), "skipped": skipped_train + skipped_eval})
    return 0


def cmd_data_bigbench(args) -> int:
    from dataeff.bigbench import export_task

    eval_size = args.eval_size if args.eval_size < 1 else int(args.eval_size)
    paths = export_task(args.task, args.out, eval_size=eval_size, max_examples=args.max_examples, seed=args.seed)
    _print_json({k: str(v) for k, v in paths.items()})
    return 0


def _int_list(text: str, what: str) -> tuple[int, ...]:
    from dataeff.errors import DataError

    try:
        return tuple(int(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise DataError(f"--{what} {text!r}: give comma-separated integers, e.g. 0,50,100") from None


def _runner_args(p) -> None:
    p.add_argument(
        "--runner",
        choices=("local", "ray"),
        default="local",
        help="where fine-tunes and confidence scoring run: this process (default) or Ray, one task per unit "
        "(needs the extra: pip install 'dataeff[ray]'); MLflow runs and results are the same",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="with --runner ray: 'auto' (the cluster of `ray start --head` here), 'ray://host:10001' (a remote "
        "cluster); default: start a Ray on this machine for the command",
    )


def cmd_study(args) -> int:
    import shlex

    from dataeff.errors import DataError
    from dataeff.finetune import FinetuneSettings
    from dataeff.models import LoraSettings
    from dataeff.study import StudySettings
    from flows.study import run_study  # MLflow: the study's memory (resume, provenance)
    from integrations.mlflow_tracking import Tracker

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    human = {}
    for item in args.human_score or []:
        name, sep, value = item.rpartition("=")
        try:
            human[name] = float(value)
        except ValueError:
            name = ""
        if not sep or not name:
            raise DataError(f"--human-score {item!r}: write TASK=SCORE, e.g. sports_understanding=0.7")

    def given(**kw) -> dict:
        return {k: v for k, v in kw.items() if v is not None}

    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()) if args.lora_targets else None
    finetune = FinetuneSettings.from_dict(
        given(
            r=args.ft_r,
            alpha=args.ft_alpha,
            lr=args.lr,
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_steps=args.max_steps,
            target_modules=targets,
        )
    )
    settings = StudySettings(
        model=args.model,
        tasks=tasks,
        budgets=_int_list(args.budgets, "budgets"),
        seeds=_int_list(args.seeds, "seeds"),
        eval_size=args.eval_size,
        draws=args.draws,
        k=args.k,
        max_pool=args.max_pool or None,
        max_budget=args.max_budget,
        human_scores=human,
        chat_template=args.chat_template,
        device=args.device,
        dtype=args.dtype,
        lora=LoraSettings(**given(r=args.lora_r, alpha=args.lora_alpha, target_modules=targets)),
        finetune=finetune,
        name=args.name,
        family=args.family,
    )
    if args.tracking_uri:
        tracker = Tracker(args.tracking_uri)
    else:
        from dataeff.project import dataeff_home

        tracker = Tracker.local(dataeff_home())
    runner = None
    if args.runner != "local":
        from flows.runners import make_runner

        try:
            runner = make_runner(args.runner, address=args.ray_address)
        except ValueError as exc:
            raise DataError(str(exc)) from None
    try:
        summary = run_study(
            settings,
            tracker,
            out=args.out,
            calibration_out=args.calibration_out,
            progress=not args.no_progress,
            command="dataeff " + shlex.join(sys.argv[1:]),
            results_dir=args.results,
            runner=runner,
        )
    finally:
        if runner is not None:
            runner.close()
    _print_json(summary)
    return 0


# ----------------------------------------------------------------------------- project commands


def _flows_cli():
    import app.commands as commands  # project commands: Prefect, Label Studio, MLflow through flows/

    return commands


def cmd_project(args) -> int:
    return _flows_cli().project(args)


def cmd_bootstrap(args) -> int:
    return _flows_cli().bootstrap(args)


def cmd_loop(args) -> int:
    return _flows_cli().loop(args)


def cmd_serve(args) -> int:
    return _flows_cli().serve(args)


def cmd_unlock(args) -> int:
    return _flows_cli().unlock(args)


def cmd_demo(args) -> int:
    return _flows_cli().demo(args)


def cmd_calibrate_family(args) -> int:
    return _flows_cli().calibrate_family(args)


def cmd_ml_backend(args) -> int:
    from app.ml_backend import run  # FastAPI + the project's services, imported only when this command runs

    return run(args)


def cmd_bench(args) -> int:
    from benchmarks.__main__ import main as bench_main

    return bench_main(args.bench_args)


# ----------------------------------------------------------------------------- parser


def _calibration_args(p: argparse.ArgumentParser) -> None:
    """``--coef C I`` or ``--calibration NAME|FILE`` (read by :func:`_calibration_from_args`)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--coef", type=float, nargs=2, metavar=("C", "I"), default=None, help="calibration AUC = C * CoS-Low + I"
    )
    g.add_argument("--calibration", default=CALIBRATION, help="built-in calibration name or a calibration JSON file")


def _model_args(p: argparse.ArgumentParser, chat_default: bool) -> None:
    p.add_argument(
        "--model",
        default="smollm2",
        help="'smollm2' (offline SmolLM2-135M-Instruct), a local model folder, a .gguf file or a hub id (default: smollm2)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--dtype",
        default=None,
        help="fp32, bf16 or fp16 (default: fp32 everywhere: calibrations are fp32 and bf16 moves CoS-Low by ~0.1)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--chat-template",
        dest="chat_template",
        action="store_true",
        default=chat_default,
        help=f"wrap prompts in the model's chat template{' (default)' if chat_default else ''}",
    )
    g.add_argument(
        "--no-chat-template",
        dest="chat_template",
        action="store_false",
        help=f"use prompts as they are{' (default)' if not chat_default else ''}",
    )


def _bound_args(p) -> None:
    from dataeff.bounds import DEFAULT_MAX_ANSWER_TOKENS, DEFAULT_MAX_PROMPT_TOKENS

    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=DEFAULT_MAX_PROMPT_TOKENS,
        help="longer prompts (chat template included) are skipped and named, never run",
    )
    p.add_argument(
        "--max-answer-tokens",
        type=int,
        default=DEFAULT_MAX_ANSWER_TOKENS,
        help="longer gold answers are skipped and named",
    )


def _project_commands(add) -> None:
    """The annotation-loop commands (Label Studio + MLflow + Prefect)."""
    p = add(
        "project",
        None,
        "annotation projects: create one (Label Studio project, pool import, MLflow experiment, saved config)",
    )
    psub = p.add_subparsers(dest="project_command", metavar="ACTION", required=True)
    cp = psub.add_parser(
        "create",
        help="create or update a project (idempotent: re-running imports nothing twice)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cp.set_defaults(func=cmd_project)
    cp.add_argument("--name", required=True, help="project name (Label Studio title, MLflow experiment)")
    src = cp.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="unlabeled pool JSONL/CSV with 'prompt' (and optional 'id')")
    src.add_argument("--bigbench", metavar="TASK", help="use a BIG-bench task from the offline archive as the pool")
    cp.add_argument(
        "--labels", default=None, help="file with one label per line (a choice task); omit for free-text answers"
    )
    cp.add_argument(
        "--eval", default=None, help="labeled held-out JSONL/CSV; without it the team labels --eval-size pool items"
    )
    cp.add_argument("--metric", choices=["exact_match", "f1"], default="exact_match")
    cp.add_argument("--model", default="smollm2", help="model source (see `dataeff confidence --help`)")
    cp.add_argument(
        "--calibration",
        default="",
        help="calibration name or JSON file of the model family (default: the model's fitted one when dataeff "
        f"ships it, e.g. smollm2 -> smollm2-135m-instruct-lora, else {CALIBRATION}); `dataeff calibrations` lists them",
    )
    cp.add_argument("--no-chat-template", dest="chat_template", action="store_false", default=True)
    cp.add_argument("--target", type=float, nargs="+", default=list(TARGETS), help="normalised targets")
    cp.add_argument("--primary-target", type=float, default=PRIMARY_TARGET, help="target the stop rule uses")
    cp.add_argument("--label-cap", type=int, default=LABEL_CAP, help="most labels the team will give")
    cp.add_argument("--eval-size", type=int, default=100, help="held-out items the team labels once")
    cp.add_argument("--max-examples", type=int, default=None, help="with --bigbench: use a seeded subset")
    cp.add_argument("--label-studio-url", default="http://127.0.0.1:8080")
    cp.add_argument(
        "--token-env", default="LABEL_STUDIO_API_KEY", help="NAME of the env var holding the Label Studio token"
    )
    cp.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite under $DATAEFF_HOME)")
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument(
        "--strict",
        action="store_true",
        help="all or nothing: any bad row of --data/--eval stops the import (every bad row is named); "
        "without it the good rows are imported and each bad row is reported (line, id, why)",
    )
    from dataeff.bounds import DEFAULT_MAX_ANSWER_TOKENS, DEFAULT_MAX_PROMPT_TOKENS

    cp.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=DEFAULT_MAX_PROMPT_TOKENS,
        help="longest prompt the model is run on (tokens, chat template included); longer items are "
        "skipped at bootstrap and reported by id",
    )
    cp.add_argument(
        "--max-answer-tokens",
        type=int,
        default=DEFAULT_MAX_ANSWER_TOKENS,
        help="longest gold answer used for CoS-Low (tokens); longer labeled answers are left out and reported",
    )

    p = add(
        "bootstrap",
        cmd_bootstrap,
        "score the pool's confidence and queue the low-confidence batch (+ eval split) in Label Studio",
    )
    p.add_argument("project", help="project name (from `dataeff project create`)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="prompts per generation batch (default: chosen for the device: 16 on CPU, from free memory on CUDA; "
        "logged on the bootstrap run)",
    )
    _runner_args(p)

    p = add(
        "loop",
        cmd_loop,
        "run one loop iteration: pull labels, estimate, fine-tune due budgets, log, decide, request labels",
        epilog="One iteration per project at a time: a second one waits (saying for whom) up to --lock-timeout. "
        "A killed iteration's lock frees itself within 60 s; `dataeff unlock PROJECT` frees it at once.",
    )
    p.add_argument("project")
    p.add_argument(
        "--lock-timeout", type=float, default=3600, help="seconds to wait while another iteration of the project runs"
    )

    p = add(
        "unlock", cmd_unlock, "release a project's loop lock left by a killed iteration (refuses while its holder runs)"
    )
    p.add_argument("project")
    p.add_argument("--force", action="store_true", help="release even if the recorded holder process is still running")

    p = add(
        "serve",
        cmd_serve,
        "serve the loop as Prefect deployments on an interval schedule (one run per project at a time)",
    )
    p.add_argument("projects", nargs="*", help="project names (default: every saved project)")
    p.add_argument("--interval", type=int, default=900, help="seconds between iterations")

    p = add(
        "demo",
        cmd_demo,
        "the whole loop on this machine: local Label Studio + MLflow UI, SmolLM2, a simulated annotator",
    )
    p.add_argument("--task", default="intent_recognition", help="BIG-bench task")
    p.add_argument("--quick", action="store_true", help="smaller pool and budgets (a smoke run, not the real demo)")
    p.add_argument(
        "--label-cap", type=int, default=None, help="stop after this many labels (default: the demo's grid end)"
    )
    p.add_argument("--noise", type=float, default=0.0, help="share of simulated labels that are wrong")
    p.add_argument("--delay", type=float, default=0.0, help="seconds the simulated annotator waits per label")
    p.add_argument("--workdir", default=".demo", help="where servers keep their data")
    p.add_argument("--label-studio-port", type=int, default=8080)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument(
        "--keep-running",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the summary keep Label Studio and the MLflow UI up until Ctrl-C, so the printed links work "
        "(default); --no-keep-running stops them at once (scripts, CI)",
    )

    p = add(
        "calibrate-family",
        cmd_calibrate_family,
        "fit a model family's calibration from projects' MLflow runs (measured curves + CoS-Low)",
    )
    p.add_argument("--family", required=True)
    p.add_argument("--projects", nargs="+", required=True)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument(
        "--out", default=None, help="save the calibration JSON here (default: $DATAEFF_HOME/calibrations/<family>.json)"
    )


def cmd_label_studio(args) -> int:
    import json as _json
    import logging

    from integrations.ls_server import DEFAULT_VENV, LS_VERSION, LabelStudioServer, install

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.action == "install":
        did = install()
        print(f"Label Studio {LS_VERSION} {'installed' if did else 'already installed'} in {DEFAULT_VENV}")
        return 0
    server = LabelStudioServer(port=args.port, data_dir=args.data_dir, postgres=args.postgres)
    if args.action == "start":
        server.start(timeout=args.timeout)
        print(f"Label Studio is up at {server.url} (pid {server.pid()}, log {server.log_file})")
        print(f"login {server.username}; password and API token are in {server.credentials_file} (mode 0600)")
    elif args.action == "stop":
        print("stopped" if server.stop() else "no server was running for this data dir")
    else:
        status = server.status()
        print(_json.dumps(status, indent=2))
        return 0 if status["healthy"] else 3
    return 0


def _service_commands(add) -> None:
    """Local services dataeff manages for the user (Label Studio in its own virtualenv)."""
    from integrations.ls_server import DEFAULT_DATA_DIR, DEFAULT_PORT

    p = add(
        "label-studio", cmd_label_studio, "install, start, stop or check the local Label Studio server (own virtualenv)"
    )
    p.add_argument("action", choices=["install", "start", "stop", "status"])
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--postgres", action="store_true", help="use Postgres on 127.0.0.1:5432 instead of SQLite")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for /health on start")


ML_BACKEND_EPILOG = """\
connect it in Label Studio (the backend must be running first):
  UI:  project -> Settings -> Model -> Connect Model: a title, Backend URL http://127.0.0.1:9090
       (the --url Label Studio reaches it at), "Interactive preannotations" off -> Validate and Save
  API: dataeff ml-backend --project tickets --port 9090 --connect
  Label Studio then adds the project webhook <url>/webhook for all actions by itself.
  Label Studio 1.23 refuses backends and webhooks on local/private addresses unless it runs with
  ML_BLOCK_LOCAL_IP=false SSRF_PROTECTION_ENABLED=false (`dataeff label-studio start` sets both).

endpoints (the protocol of label-studio-ml-backend):
  GET  /health, /   {"status": "UP", "model_class": ...}; Label Studio checks it (1 s timeout)
  POST /setup       {"model_version": ...} of the current predictor: the latest fine-tuned adapter the
                    loop saved, or the base model; the model page shows it
  POST /predict     one prediction per task in the project's label config ("Retrieve Predictions" in the
                    Data Manager, or live when the project's model version is this backend's title);
                    an empty result where the pre-annotation rules withhold the answer (not a valid
                    label, a one-label guesser, a model measured below the accuracy threshold);
                    at most --predict-budget seconds per request (Label Studio waits 100 s,
                    ML_TIMEOUT_PREDICT): items not reached get no prediction and the next
                    "Retrieve Predictions" asks for exactly those, so a big selection fills in over a few clicks
  POST /webhook     ANNOTATION_CREATED / ANNOTATION_UPDATED / ANNOTATIONS_DELETED and START_TRAINING
                    ("Start Training" on the model page) only SCHEDULE an early loop run and answer at
                    once; bursts are coalesced (at most one pending run); other actions are ignored
  POST /train       the same as START_TRAINING;  GET /versions: the current model version

early runs (--early-runs auto): a flow run of the deployment dataeff-loop/loop-PROJECT when
`dataeff serve` serves it on the configured Prefect API (PREFECT_API_URL), else one `loop_iteration`
in a child process; the project's lock keeps them from overlapping other iterations.
Polling stays the source of truth: every iteration reconciles all labels in Label Studio, so a lost
webhook only delays a change to the next scheduled run, and deletions (which no webhook can replay)
are found the same way. Keep `dataeff serve` (or cron `dataeff loop`) running beside the backend.
"""


class _RawEpilogDefaultsFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the options' help, the epilog as written."""


def _ml_backend_command(add) -> None:
    """Label Studio's ML-backend protocol for one project (predictions + webhooks that start early loop runs)."""
    p = add(
        "ml-backend",
        cmd_ml_backend,
        "serve a project's model to Label Studio as an ML backend: predictions, and webhooks that start loop runs early",
        epilog=ML_BACKEND_EPILOG,
    )
    p.formatter_class = _RawEpilogDefaultsFormatter
    p.add_argument("--project", required=True, help="dataeff project name (from `dataeff project create`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, required=True, help="port to listen on, e.g. 9090")
    p.add_argument(
        "--url",
        default=None,
        help="URL Label Studio reaches the backend at, for --connect and the printed summary (None: http://HOST:PORT)",
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="once serving, connect the backend to the project through Label Studio's API (idempotent)",
    )
    p.add_argument("--title", default="dataeff", help="the backend's name on Label Studio's model page (--connect)")
    p.add_argument(
        "--predict-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time one /predict request spends answering (None: 60 s, below Label Studio's 100 s "
        "ML_TIMEOUT_PREDICT; raise both together)",
    )
    p.add_argument(
        "--early-runs",
        choices=["auto", "deployment", "local", "off"],
        default="auto",
        help="how a webhook starts an early loop run: auto = the Prefect deployment when served, else a child "
        "process; off = acknowledge webhooks only",
    )


def build_parser() -> argparse.ArgumentParser:
    from dataeff import __version__

    parser = argparse.ArgumentParser(
        prog="dataeff",
        description="How many labels does this task need before a LoRA fine-tune reaches the target? "
        "CoS-Low (Je & Raffel 2025) from 32 low-confidence labels, checked against real fine-tunes as labels arrive.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dataeff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, func, help_, **kw):
        p = sub.add_parser(
            name, help=help_, description=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kw
        )
        p.set_defaults(func=func)
        return p

    p = add("auc", cmd_auc, "data-efficiency AUC of a learning curve in the paper's results format")
    p.add_argument(
        "results",
        help='JSON {"<budget>": {"accuracy"|"exact_string_match_accuracy"|"f1": score}}; budget 0 = zero-shot',
    )
    p.add_argument("--human-score", type=float, default=None, help="ceiling score if known (else the best observed)")
    p.add_argument("--max-budget", type=int, default=5000, help="curve cut-off N")
    p.add_argument(
        "--allow-missing-zero-shot",
        action="store_true",
        help="accept a curve without budget 0 (one of the paper's published curves has none) and compute its AUC "
        "as the reference does, from the first budget on; without it a missing zero-shot is an error",
    )
    p.add_argument(
        "--metric", choices=["accuracy", "f1"], default=None, help="which score key to read (default: the one present)"
    )

    p = add("predict", cmd_predict, "predicted AUC, curve and labels needed per target from a CoS-Low value")
    p.add_argument("--coslow", type=float, required=True, help="measured CoS-Low")
    _calibration_args(p)
    p.add_argument(
        "--target",
        type=float,
        nargs="+",
        default=list(TARGETS),
        help="normalised targets (share of the way from zero-shot to ceiling)",
    )
    p.add_argument("--max-budget", type=int, default=5000, help="curve cut-off N")
    p.add_argument("--level", type=float, default=0.8, help="prediction interval level")

    p = add(
        "assess",
        cmd_assess,
        "labels needed and the loop's next decision from CoS-Low plus the fine-tunes measured so far",
        epilog="example: dataeff assess --coslow 0.327 --measured 0:0.117 50:0.133 100:0.183 --n-eval 60 "
        "--primary-target 0.8 --label-cap 633 --labeled 192\n"
        "Prints JSON: labels_needed per target (posterior median, 80%% interval, P(never)), the decision "
        "(request_labels | finetune | stop) with its reason, P(target within the cap) and the ceiling assumed. "
        "The same step the annotation loop runs (dataeff.step.step).",
    )
    p.add_argument("--coslow", type=float, required=True, help="measured CoS-Low of the 32 low-confidence examples")
    _calibration_args(p)
    p.add_argument(
        "--measured",
        nargs="+",
        metavar="LABELS:SCORE",
        default=None,
        help="fine-tune scores on the eval split, 0 = zero-shot, e.g. 0:0.117 50:0.133 100:0.183",
    )
    p.add_argument(
        "--n-eval", type=int, default=None, help="eval-split size (sets each score's binomial noise; default 200)"
    )
    p.add_argument("--human-score", type=float, default=None, help="known ceiling score; else the ceiling is estimated")
    p.add_argument("--target", type=float, nargs="+", default=list(TARGETS), help="normalised targets to report")
    p.add_argument("--primary-target", type=float, default=0.8, help="the target the decision is about")
    p.add_argument("--label-cap", type=int, default=None, help="most training labels the team can give (default 5000)")
    p.add_argument(
        "--labeled", type=int, default=None, help="training labels given so far (default: the largest measured budget)"
    )
    p.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=None,
        help="fine-tune budget grid (default 0 50 100 200 500 1000 2500 5000)",
    )
    p.add_argument(
        "--curve-model",
        choices=["beta", "xp"],
        default="beta",
        help="posterior curve family: beta (S-shaped; default) or xp (the paper's x^p, the pre-replay model)",
    )
    p.add_argument(
        "--seed-noise", type=float, default=0.03, help="fine-tune seed-to-seed noise sd assumed (score units)"
    )
    p.add_argument("--max-budget", type=int, default=5000, help="curve cut-off N")
    p.add_argument("--level", type=float, default=0.8, help="interval coverage")

    p = add(
        "calibrate", cmd_calibrate, "fit a model family's calibration AUC = c * CoS-Low + I from task,coslow,auc rows"
    )
    p.add_argument("pairs", help="CSV with columns task,coslow,auc (one row per task)")
    p.add_argument("--family", required=True, help="model family name, e.g. qwen2.5-7b-instruct")
    p.add_argument(
        "--fit-kind", choices=["full", "lora"], default="lora", help="fine-tuning kind the AUCs were measured with"
    )
    p.add_argument("--out", default=None, help="save the calibration JSON here")

    add("calibrations", cmd_calibrations, "list the built-in calibrations")

    p = add(
        "study",
        cmd_study,
        "calibrate a model family: CoS-Low and LoRA learning curves on several tasks, then the fit (resumable via MLflow)",
        epilog="example: dataeff study --model smollm2 --tasks intent_recognition,sports_understanding,data/spam.jsonl "
        "--budgets 0,50,100,200,500,1000 --seeds 0,1 --out docs/study.md\n"
        "Per task: confidence over the pool, CoS-Low of k low-confidence and k random examples over --draws "
        "LoRA draws, fine-tunes on the grid x seeds scored on a held-out split, the paper's AUC. Every run goes "
        "to MLflow keyed by its inputs: re-running resumes an interrupted study and writes nothing for a "
        "finished one. Prints a JSON summary; writes --out (markdown) and the calibration JSON.",
    )
    _model_args(p, chat_default=False)
    p.add_argument(
        "--tasks",
        required=True,
        help="comma-separated BIG-bench task names, corpora (bbc_news, tweet_sentiment, spam_assassin) or labeled JSONL/CSV files (prompt, answer)",
    )
    p.add_argument("--budgets", default="0,50,100,200,500,1000", help="fine-tune budget grid, 0 = zero-shot")
    p.add_argument("--seeds", default="0,1", help="fine-tune seeds per budget")
    p.add_argument("--eval-size", type=int, default=200, help="held-out evaluation examples per task")
    p.add_argument("--draws", type=int, default=3, help="LoRA initialisations CoS-Low is computed over")
    p.add_argument("--k", type=int, default=32, help="examples CoS-Low is computed on (low-confidence and random)")
    p.add_argument("--max-pool", type=int, default=2000, help="pool limit per task (seeded subset; 0 = no limit)")
    p.add_argument(
        "--max-budget", type=int, default=None, help="AUC cut-off N (default: the largest budget; the paper: 5000)"
    )
    p.add_argument("--human-score", nargs="*", metavar="TASK=SCORE", default=None, help="known ceiling scores")
    # Defaults: None = LoraSettings / FinetuneSettings (their one home; not imported here to keep --help fast).
    p.add_argument("--lora-r", type=int, default=None, help="CoS-Low LoRA rank (default: LoraSettings, the paper's 64)")
    p.add_argument("--lora-alpha", type=int, default=None, help="CoS-Low LoRA alpha (default: LoraSettings)")
    p.add_argument(
        "--lora-targets", default=None, help="comma-separated LoRA target modules, both LoRAs (default: all linear)"
    )
    p.add_argument(
        "--ft-r", type=int, default=None, help="fine-tune LoRA rank (default: FinetuneSettings, as the loop)"
    )
    p.add_argument("--ft-alpha", type=int, default=None, help="fine-tune LoRA alpha (default: FinetuneSettings)")
    p.add_argument("--lr", type=float, default=None, help="fine-tune learning rate (default: FinetuneSettings)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tune epochs (default: FinetuneSettings)")
    p.add_argument("--batch-size", type=int, default=None, help="fine-tune batch size (default: FinetuneSettings)")
    p.add_argument("--max-steps", type=int, default=None, help="fine-tune optimizer steps (overrides --epochs)")
    p.add_argument("--name", default=None, help="study name = MLflow experiment (default: study-<model folder name>)")
    p.add_argument("--family", default=None, help="calibration family name (default: the model's folder name)")
    p.add_argument("--out", default="docs/study.md", help="markdown report")
    p.add_argument(
        "--calibration-out", default=None, help="calibration JSON (default: $DATAEFF_HOME/calibrations/<family>.json)"
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite:///$DATAEFF_HOME/mlflow.db)")
    p.add_argument(
        "--results",
        default=None,
        metavar="DIR",
        help="keep each finished task's result here as <task>.json (commit it with the report): a study "
        "resumed on another machine or MLflow store takes those tasks from there",
    )
    _runner_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")

    p = add("confidence", cmd_confidence, "greedy answers and per-answer confidence for an unlabeled pool (batched)")
    _model_args(p, chat_default=True)
    _bound_args(p)
    p.add_argument("--data", required=True, help="pool JSONL/CSV with a 'prompt' column ('answer' optional)")
    p.add_argument("--out", required=True, help="scores JSONL: id, answer, confidence, perplexity, n_tokens")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="prompts per decoding batch (default: chosen for the device: 16 on CPU, from free memory and prompt "
        "lengths on CUDA; printed in the summary)",
    )
    p.add_argument("--max-new-tokens", type=int, default=30, help="longest answer scored")
    p.add_argument("--select-low", type=int, default=0, metavar="K", help="also draw K ids from the bottom decile")
    p.add_argument("--fraction", type=float, default=0.1, help="low-confidence segment size")
    p.add_argument("--by", choices=["confidence", "perplexity"], default="confidence")
    p.add_argument("--seed", type=int, default=0)

    p = add("select-low", cmd_select_low, "draw K ids from the bottom decile of a scores file")
    p.add_argument("scores", help="output of `dataeff confidence`")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--by", choices=["confidence", "perplexity"], default="confidence")
    p.add_argument("--seed", type=int, default=0)

    p = add("coslow", cmd_coslow, "CoS-Low: median pairwise cosine of LoRA gradients of labeled examples")
    _model_args(p, chat_default=False)
    p.add_argument("--data", required=True, help="labeled JSONL/CSV: prompt, answer")
    p.add_argument("--lora-r", type=int, default=64, help="LoRA rank (the paper's setting)")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha; the update is alpha/r * B A")
    p.add_argument(
        "--lora-dropout", type=float, default=0.05, help="LoRA dropout (inactive: the model is in eval mode)"
    )
    p.add_argument(
        "--lora-targets",
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        help="comma-separated linear layers that get adapters",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of LoRA A's initialisation (draw d uses seed+d)")
    p.add_argument("--draws", type=int, default=1, help="LoRA initialisations to average over (reports the spread)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="examples per forward/backward pass (default: chosen for the device: 8 on CPU; on CUDA all examples "
        "in one batch when they fit; printed as batch_size)",
    )
    p.add_argument(
        "--storage",
        choices=GRAM_STORAGES,
        default="auto",
        help="where per-example gradient rows go when the examples do not fit one batch (every choice is exact; "
        "auto: device memory, then host memory, disk or several passes; printed as gram.storage)",
    )
    p.add_argument(
        "--projection-dim",
        type=int,
        default=None,
        help="random-projection size (bounds memory for 7B+ models); exact when omitted",
    )

    p = add("finetune", cmd_finetune, "LoRA fine-tune on a seeded subset of N labels and evaluate on a held-out set")
    _model_args(p, chat_default=True)
    _bound_args(p)
    p.add_argument("--train", required=True)
    p.add_argument("--eval", required=True)
    p.add_argument("--budget", type=int, required=True, help="training examples (0 = zero-shot evaluation)")
    p.add_argument("--labels", default=None, help="comma-separated label set of a choice task")
    p.add_argument("--metric", choices=["exact_match", "f1"], default="exact_match")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapter-dir", default=None, help="save the trained LoRA adapter here")

    p = add("data", None, "task data helpers")
    dsub = p.add_subparsers(dest="data_command", metavar="SOURCE", required=True)
    bp = dsub.add_parser(
        "bigbench",
        help="export a BIG-bench task (offline archive) as pool.jsonl + eval.jsonl",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bp.set_defaults(func=cmd_data_bigbench)
    bp.add_argument("task", help="task name, e.g. sports_understanding, intent_recognition")
    bp.add_argument("--out", default=None, help="output folder (default: data/<task>)")
    bp.add_argument("--eval-size", type=float, default=100, help="held-out examples (or a fraction < 1)")
    bp.add_argument("--max-examples", type=int, default=None)
    bp.add_argument("--seed", type=int, default=0)

    _project_commands(add)
    _ml_backend_command(add)
    _service_commands(add)

    p = add("bench", cmd_bench, "speed/memory benchmarks vs the naive reference algorithm (see docs/benchmarks.md)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments passed to `python -m benchmarks`")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # argparse.REMAINDER drops leading options in a subparser (`dataeff bench --quick`),
        # so the benchmarks' own parser gets everything after the sub-command.
        from benchmarks.__main__ import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    # MLflow's per-download bars (every read-back of a small JSON artifact) would drown dataeff's own.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.command == "data" and getattr(args, "task", None) and args.out is None:
        args.out = f"data/{args.task}"
    try:
        return int(args.func(args) or 0)
    except DataEffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `dataeff predict ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
