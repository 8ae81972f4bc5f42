"""Handlers of the ``dataeff`` project commands (create, bootstrap, loop, serve, demo, calibrate-family).

Thin: take what ``app.cli`` parsed, call a flow or a plain function, print JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from dataeff.data import TaskSpec
from dataeff.errors import DataError
from dataeff.project import ProjectConfig, dataeff_home


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _quiet_prefect() -> None:
    from flows.runtime_env import configure_runtime

    configure_runtime()


def project(args) -> int:
    """Create or update a project. Bad rows of ``--data``/``--eval`` are reported (stderr, one line
    each, and ``rejected_rows`` in the JSON) and the good rows imported; with ``--strict`` any bad
    row stops everything before Label Studio is touched (a DataError naming every bad row)."""
    import sys

    from dataeff.bounds import likely_too_long
    from dataeff.data import RejectedRow, read_rows
    from flows.project import create_project

    rejected: list[RejectedRow] = []
    eval_labeled = []
    if args.eval:
        read = read_rows(args.eval)
        eval_labeled, rejected = read.examples, rejected + read.rejected
    if args.bigbench:
        from dataeff.bigbench import load_bigbench_task

        task, pool = load_bigbench_task(args.bigbench, max_examples=args.max_examples, seed=args.seed)
        pool = [e.__class__(prompt=e.prompt, id=e.id) for e in pool]  # the team labels; gold stays out
    else:
        read = read_rows(args.data, require_answer=False)
        pool, rejected = read.examples, rejected + read.rejected
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
    cfg = ProjectConfig(
        name=args.name,
        task=task,
        model=args.model,
        calibration=args.calibration,
        chat_template=args.chat_template,
        targets=tuple(args.target),
        primary_target=args.primary_target,
        label_cap=args.label_cap,
        eval_size=args.eval_size,
        seed=args.seed,
        label_studio_url=args.label_studio_url,
        label_studio_token_env=args.token_env,
        tracking_uri=tracking,
        max_prompt_tokens=args.max_prompt_tokens,
        max_answer_tokens=args.max_answer_tokens,
    )
    if rejected and args.strict:
        raise DataError(
            f"--strict: {len(rejected)} bad row(s), nothing imported; fix or remove them "
            f"(or drop --strict to import the good rows):\n" + "\n".join(f"  {r}" for r in rejected)
        )
    for row in rejected:
        print(f"skipped {row}", file=sys.stderr)
    for item_id, chars in likely_too_long([*pool, *eval_labeled], cfg.max_prompt_tokens):
        print(
            f"warning: item {item_id!r} has a {chars:,}-character prompt, far beyond max_prompt_tokens="
            f"{cfg.max_prompt_tokens:,}; bootstrap will skip it (shorten it or raise --max-prompt-tokens)",
            file=sys.stderr,
        )
    try:
        cfg.label_studio_project_id = ProjectConfig.load(args.name).label_studio_project_id
    except DataError:
        pass
    _print({**create_project(cfg, pool, eval_labeled), "rejected_rows": [row.as_dict() for row in rejected]})
    return 0


def bootstrap(args) -> int:
    _checked(args.project, bootstrapped=False)
    _quiet_prefect()
    from flows.bootstrap import bootstrap as flow

    _print(
        flow(
            args.project,
            batch_size=args.batch_size,
            runner=getattr(args, "runner", "local"),
            ray_address=getattr(args, "ray_address", None),
        )
    )
    return 0


LOOP_OUTPUT = (
    "project",
    "labeled",
    "measured",
    "decision",
    "requested",
    "new_runs",
    "errors",
    "unmanaged_task_ids",
    "warnings",
)
"""Keys of the iteration summary ``dataeff loop`` prints (the full summary is in MLflow's decision.json)."""


def _checked(project: str, *, bootstrapped: bool = True) -> ProjectConfig:
    """Load the config and check its services BEFORE Prefect starts (user errors: one line, no traceback)."""
    from flows.services import preflight

    config = ProjectConfig.load(project)
    preflight(config, bootstrapped=bootstrapped)
    return config


def loop(args) -> int:
    _checked(args.project)
    _quiet_prefect()
    from flows.loop import loop_iteration

    summary = loop_iteration(args.project, lock_timeout_seconds=args.lock_timeout)
    _print({k: summary.get(k) for k in LOOP_OUTPUT})
    return 0


def serve(args) -> int:
    names = args.projects or sorted(p.stem for p in (dataeff_home() / "projects").glob("*.json"))
    if not names:
        raise DataError(f"no projects under {dataeff_home() / 'projects'}; run `dataeff project create` first")
    for name in names:
        _checked(name, bootstrapped=False)
    _quiet_prefect()
    from flows.serve import serve_projects

    serve_projects(names, interval_seconds=args.interval)
    return 0


def unlock(args) -> int:
    ProjectConfig.load(args.project)  # a project that exists
    _quiet_prefect()
    from flows.locks import unlock as release

    _print(release(args.project, force=args.force))
    return 0


def demo(args) -> int:
    _quiet_prefect()
    from flows.demo import DemoSettings, run_demo

    settings = DemoSettings.quick(args.task) if args.quick else DemoSettings(task=args.task)
    result = run_demo(
        settings,
        workdir=Path(args.workdir),
        ls_port=args.label_studio_port,
        mlflow_port=args.mlflow_port,
        noise=args.noise,
        delay=args.delay,
        keep_running=args.keep_running,
        label_cap=args.label_cap,
    )
    return 0 if result.get("final") else 1


def calibrate_family(args) -> int:
    _quiet_prefect()
    from flows.calibrate import calibrate_family as flow

    out = flow(args.family, args.projects, tracking_uri=args.tracking_uri, out=args.out)
    _print(out)
    return 0
