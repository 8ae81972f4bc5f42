"""Handlers of the ``dataeff`` project commands (create, bootstrap, loop, serve, demo, calibrate-family).

Thin: parse what ``dataeff.cli`` collected, call a flow or a plain function, print JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dataeff.data import TaskSpec, read_examples
from dataeff.errors import DataError
from dataeff.project import ProjectConfig, dataeff_home


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _quiet_prefect() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def project(args) -> int:
    from flows.project import create_project

    eval_labeled = read_examples(args.eval) if args.eval else []
    if args.bigbench:
        from dataeff.bigbench import load_bigbench_task

        task, pool = load_bigbench_task(args.bigbench, max_examples=args.max_examples, seed=args.seed)
        pool = [e.__class__(prompt=e.prompt, id=e.id) for e in pool]  # the team labels; gold stays out
    else:
        pool = read_examples(args.data, require_answer=False)
        labels = None
        if args.labels:
            path = Path(args.labels)
            if not path.exists():
                raise DataError(f"{path}: label file not found; give one label per line")
            labels = tuple(l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip())
            if len(labels) < 2:
                raise DataError(f"{path}: a choice task needs at least 2 labels, found {len(labels)}")
        task = TaskSpec(name=args.name, labels=labels, metric=args.metric)
    tracking = args.tracking_uri or f"sqlite:///{dataeff_home() / 'mlflow.db'}"
    dataeff_home().mkdir(parents=True, exist_ok=True)
    cfg = ProjectConfig(name=args.name, task=task, model=args.model, calibration=args.calibration,
                        chat_template=args.chat_template, targets=tuple(args.target), primary_target=args.primary_target,
                        label_cap=args.label_cap, eval_size=args.eval_size, seed=args.seed,
                        label_studio_url=args.label_studio_url, label_studio_token_env=args.token_env,
                        tracking_uri=tracking)
    try:
        cfg.label_studio_project_id = ProjectConfig.load(args.name).label_studio_project_id
    except DataError:
        pass
    _print(create_project(cfg, pool, eval_labeled))
    return 0


def bootstrap(args) -> int:
    _quiet_prefect()
    from flows.bootstrap import bootstrap as flow

    _print(flow(args.project, batch_size=args.batch_size))
    return 0


def loop(args) -> int:
    _quiet_prefect()
    from flows.loop import loop_iteration

    summary = loop_iteration(args.project)
    _print({k: summary[k] for k in ("project", "labeled", "measured", "decision", "requested", "new_runs")})
    return 0


def serve(args) -> int:
    _quiet_prefect()
    from flows.serve import serve_projects

    names = args.projects or sorted(p.stem for p in (dataeff_home() / "projects").glob("*.json"))
    if not names:
        raise DataError(f"no projects under {dataeff_home() / 'projects'}; run `dataeff project create` first")
    serve_projects(names, interval_seconds=args.interval)
    return 0


def demo(args) -> int:
    _quiet_prefect()
    from flows.demo import DemoSettings, run_demo

    settings = DemoSettings.quick(args.task) if args.quick else DemoSettings(task=args.task)
    result = run_demo(settings, workdir=Path(args.workdir), ls_port=args.label_studio_port, mlflow_port=args.mlflow_port,
                      noise=args.noise, delay=args.delay, keep_running=args.keep_running, label_cap=args.label_cap)
    return 0 if result.get("final") else 1


def calibrate_family(args) -> int:
    _quiet_prefect()
    from flows.calibrate import calibrate_family as flow

    out = flow(args.family, args.projects, tracking_uri=args.tracking_uri, out=args.out)
    _print(out)
    return 0
