"""The one-command demo: the whole loop on this machine, on the embedded default.

Label Studio (SQLite) and the MLflow UI start locally; a project is made from a BIG-bench task
with the offline SmolLM2-135M-Instruct; a simulated annotator labels exactly what the loop
requests, through the Label Studio API, from the task's gold answers; loop iterations run until
the policy stops. A summary table and the URLs to open come at the end.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dataeff.bigbench import load_bigbench_task
from dataeff.calibration import get_calibration
from dataeff.errors import DataError
from dataeff.project import ProjectConfig
from dataeff.queue import UNREQUESTED, requested_order
from flows.bootstrap import bootstrap
from flows.loop import loop_iteration
from flows.project import create_project
from integrations.label_studio import PRIORITY_FIELD, LabelStudioClient
from integrations.ls_server import LabelStudioServer
from integrations.mlflow_ui import MlflowUI

console = Console(stderr=True)


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs. The default is the real demo; ``quick()`` is a smoke-sized one.

    Attributes:
        task: BIG-bench task (intent_recognition: 7 intents, its curve rises visibly on SmolLM2).
        max_examples: pool size taken from the task (seeded subset).
        primary_target: the target the policy stops on: half of the achievable gain. On this task's
            measured curve (issue 8: 0.117 at 0 labels, ~0.16 at 50-100, 0.50 at 200, 0.68 at 400,
            ~0.78 at 633) half the gain is reached at 200 labels and 80% at 400; a fine-tune of 400
            labels costs ~8 minutes on 2 CPU cores, so the demo asks the question it can answer
            by measurement within ~12 minutes. The policy's label cap is the pool the team has.
        budgets: fine-tune grid (0 = zero-shot); the curve's axis stays the paper's N = 5000.
        label_cap: the demo's own stop: the simulated team gives at most this many training labels
            (the policy's cap stays the project default, so the policy decides on real grounds).
        eval_size: held-out items the simulated team labels once.
        low_confidence_k: the paper's 32.
        coslow_draws: LoRA initialisations for CoS-Low's spread.
        finetune: overrides of FinetuneSettings sized for 2 CPU cores.
        max_iterations: safety bound on loop iterations.
    """

    task: str = "intent_recognition"
    max_examples: int | None = None
    primary_target: float = 0.5
    budgets: tuple[int, ...] = (0, 50, 100, 200)
    label_cap: int = 200
    eval_size: int = 60
    low_confidence_k: int = 32
    coslow_draws: int = 2
    batch_min: int = 25
    batch_max: int = 100
    finetune: dict = field(default_factory=lambda: {"epochs": 2, "batch_size": 16, "max_length": 128})
    max_iterations: int = 12

    @classmethod
    def quick(cls, task: str = "intent_recognition") -> DemoSettings:
        return cls(
            task=task,
            max_examples=200,
            budgets=(0, 50),
            label_cap=50,
            eval_size=30,
            coslow_draws=1,
            finetune={"epochs": 1, "batch_size": 16, "max_length": 96},
            max_iterations=6,
        )


@dataclass
class SimulatedAnnotator:
    """Labels what the loop requests, in the queue's order, through the Label Studio API.

    The requested items are the unlabeled tasks with a positive ``dataeff_priority``; the
    annotator takes them highest first (what a person does with "Label Tasks As Displayed").
    """

    ls: LabelStudioClient
    project_id: int
    gold: dict[str, str]
    labels: tuple[str, ...] | None
    noise: float = 0.0
    delay: float = 0.0
    seed: int = 0
    done: set[str] = field(default_factory=set)

    def label_requested(self, limit: int | None = None) -> int:
        rng = random.Random(self.seed + len(self.done))
        records = {t.dataeff_id: t for t in self.ls.tasks(self.project_id) if t.dataeff_id not in self.done}
        order = requested_order({i: float(t.data.get(PRIORITY_FIELD) or UNREQUESTED) for i, t in records.items()})
        tasks = [records[i] for i in order]
        if limit is not None:
            tasks = tasks[:limit]
        answers = {}
        for t in tasks:
            answer = self.gold[t.dataeff_id]
            if self.labels and self.noise and rng.random() < self.noise:
                answer = rng.choice([l for l in self.labels if l != answer] or [answer])
            answers[t.dataeff_id] = answer
            if self.delay:
                time.sleep(self.delay)
        if answers:
            self.ls.create_annotations(self.project_id, answers)
        self.done.update(answers)
        return len(answers)


def _summary_table(cfg: ProjectConfig, history: list[dict]) -> Table:
    last = history[-1]
    table = Table(title=f"dataeff demo — {cfg.name} ({cfg.model}, task {cfg.task.name})", show_lines=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    co = last.get("coslow") or {}
    if co:
        std = co.get("std")
        table.add_row(
            "CoS-Low", f"{co['coslow']:.4f}" + (f" (sd {std:.4f} over {len(co.get('draws', []))} draws)" if std else "")
        )
    a = last.get("assessment") or {}
    if a:
        p = a["prediction"]
        iv = p.get("auc_interval")
        table.add_row("predicted AUC (paper)", f"{p['auc']:.3f}" + (f" ({iv[0]:.3f}-{iv[1]:.3f})" if iv else ""))
        first = next((h["assessment"] for h in history if h.get("assessment")), a)
        for t, n in a["labels_needed"].items():
            prior = first["prediction"]["labels_needed"].get(t)

            def fmt(v):
                return "never" if v is None else f"{v:,}"

            table.add_row(
                f"labels for {float(t):.0%} of the gain",
                f"{fmt(n['median'])} ({fmt(n['lo'])}-{fmt(n['hi'])}) [{a['source']}]; CoS-Low alone: {fmt(prior)}",
            )
        if a.get("ceiling") is not None and a["source"] == "posterior":
            table.add_row("ceiling assumed", f"{a['ceiling']:.3f} (posterior median; no human score given)")
    for b, s in last["measured"].items():
        table.add_row(f"measured score @ {b} labels", f"{s:.3f}")
    table.add_row("calibration", get_calibration(cfg.calibration).describe())
    if last.get("p_within_cap") is not None:
        table.add_row(f"P(target within the cap of {cfg.label_cap:,})", f"{last['p_within_cap']:.0%}")
    d = last["decision"]
    table.add_row("last decision", d["reason"])
    table.add_row(
        "labels given",
        f"{last['labeled']} ({last['lowconf']} low-confidence, {last['eval']} eval, {last['train']} train)",
    )
    return table


def wait_for_ctrl_c(console: Console, ui: MlflowUI | None = None) -> None:
    """Keep the demo's servers up (the printed links work) until the user presses Ctrl-C; an MLflow
    UI that went away is started again (checked every 30 s)."""
    console.print(
        "Label Studio and the MLflow UI stay up so the links above work. "
        "[bold]Press Ctrl-C to stop them[/bold] (or run the demo with --no-keep-running)."
    )
    try:
        while True:
            time.sleep(30)
            if ui is not None:
                ui.ensure(timeout=60)
    except KeyboardInterrupt:
        console.print("stopping Label Studio and the MLflow UI")


def run_demo(
    settings: DemoSettings,
    *,
    workdir: Path,
    ls_port: int = 8080,
    mlflow_port: int = 5000,
    noise: float = 0.0,
    delay: float = 0.0,
    keep_running: bool = False,
    label_cap: int | None = None,
) -> dict:
    """Run the demo loop end to end; with ``keep_running`` the servers stay up after the summary
    until Ctrl-C (after a failure they are stopped at once)."""
    t_start = time.perf_counter()
    finished = False
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["DATAEFF_HOME"] = str(workdir)
    server = LabelStudioServer(port=ls_port, data_dir=workdir / "label-studio")
    console.rule("[bold]dataeff demo")
    console.print(f"starting Label Studio on {server.url} (first boot ~1 minute of migrations)…")
    server.start()
    os.environ["LABEL_STUDIO_API_KEY"] = server.api_token  # this process and its children only; never printed
    ui = MlflowUI(workdir, mlflow_port).start()
    try:
        spec, examples = load_bigbench_task(settings.task, max_examples=settings.max_examples, seed=0)
        gold = {str(e.id): e.answer for e in examples if e.answer is not None}  # BIG-bench items all have one
        cfg = ProjectConfig(
            name=f"demo-{settings.task}".replace("_", "-"),
            task=spec,
            model="smollm2",
            chat_template=False,
            # The team's question: can the items we have reach 80% of the achievable gain?
            primary_target=settings.primary_target,
            label_cap=len(examples) - settings.eval_size,
            budgets=settings.budgets,
            eval_size=settings.eval_size,
            low_confidence_k=settings.low_confidence_k,
            coslow_draws=settings.coslow_draws,
            batch_min=settings.batch_min,
            batch_max=settings.batch_max,
            label_studio_url=server.url,
            tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
            finetune=dict(settings.finetune),
        )
        try:
            saved = ProjectConfig.load(cfg.name)
            cfg.label_studio_project_id = saved.label_studio_project_id
        except Exception:  # noqa: BLE001 - first run: no saved config
            pass
        console.print(
            f"project {cfg.name}: {len(examples)} items of BIG-bench {settings.task} -> Label Studio, "
            f"MLflow experiment {cfg.name}"
        )
        created = create_project(cfg, [e.__class__(prompt=e.prompt, id=e.id) for e in examples])
        console.print(f"  imported {created['imported']} new items ({created['already_there']} already there)")
        console.print("bootstrap: SmolLM2 answers every item once; the 32 least confident go first")
        bootstrap(cfg.name)
        cfg = ProjectConfig.load(cfg.name)
        if cfg.label_studio_project_id is None:  # saved by create_project above
            raise DataError(f"project {cfg.name}: no Label Studio project id after `project create`")
        annotator = SimulatedAnnotator(
            LabelStudioClient(server.url, server.api_token),
            cfg.label_studio_project_id,
            gold,
            spec.labels,
            noise=noise,
            delay=delay,
        )
        history = []
        cap = label_cap or settings.label_cap
        extra = cfg.eval_size  # training labels include the hard batch; the eval split comes on top
        for it in range(1, settings.max_iterations + 1):
            n = annotator.label_requested(limit=max(cap + extra - len(annotator.done), 0))
            console.print(f"[bold]iteration {it}[/]: the simulated annotator labeled {n} requested items")
            summary = loop_iteration(cfg.name)
            history.append(summary)
            d = summary["decision"]
            measured = ", ".join(f"{b}: {s:.2f}" for b, s in summary["measured"].items()) or "none yet"
            console.print(f"  labeled {summary['labeled']} | measured {measured} | {d['reason']}")
            if d["action"] == "stop":
                break
            due = [b for b in cfg.budgets if b <= summary["train"] and str(b) not in summary["measured"]]
            if summary["train"] >= cap and not due:
                console.print(f"  the demo's label cap of {cap} training labels is reached: ending the demo")
                break
        wall = time.perf_counter() - t_start
        console.print(_summary_table(cfg, history))
        ui_up = ui.ensure()
        # links on lines of their own, never wrapped or cut by the terminal's width, so they stay clickable
        console.print(f"[bold]open these[/] (wall time {wall / 60:.1f} minutes)")
        console.print(
            f"  Label Studio project: {server.url}/projects/{cfg.label_studio_project_id}/data",
            soft_wrap=True,
            markup=False,
        )
        console.print(
            f"    login {server.username}, password in {server.credentials_file}", soft_wrap=True, markup=False
        )
        console.print(f"  MLflow experiment {cfg.name}: {ui.experiment_url(cfg.name)}", soft_wrap=True, markup=False)
        if not ui_up:
            console.print(f"    the MLflow UI did not start: see {ui.log_path}", soft_wrap=True, markup=False)
        finished = True
        return {
            "project": cfg.name,
            "iterations": len(history),
            "final": history[-1] if history else None,
            "wall_seconds": wall,
        }
    finally:
        if keep_running and finished:
            wait_for_ctrl_c(console, ui)
        ui.stop()
        server.stop()
