"""A project's saved configuration: which task, model, targets and services one annotation loop uses.

Saved as JSON (``<home>/projects/<name>.json``, ``home`` = ``$DATAEFF_HOME`` or ``./.dataeff``).
It holds no secret: the Label Studio token is read from the environment variable it names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from dataeff.bounds import DEFAULT_MAX_ANSWER_TOKENS, DEFAULT_MAX_PROMPT_TOKENS
from dataeff.data import TaskSpec
from dataeff.defaults import LABEL_CAP, PRIMARY_TARGET, TARGETS, calibration_for
from dataeff.efficiency import BUDGET_GRID
from dataeff.errors import DataError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def dataeff_home() -> Path:
    """Where project configs and local service data live: ``$DATAEFF_HOME`` or ``./.dataeff``."""
    return Path(os.environ.get("DATAEFF_HOME", ".dataeff")).resolve()


@dataclass
class ProjectConfig:
    """Everything one annotation loop needs to know about its project.

    Attributes:
        name: project name; also the Label Studio project title and the MLflow experiment name.
        task: task name, label set (``None`` = free text) and metric.
        model: model source for :func:`dataeff.models.load_model` (``"smollm2"``, folder, .gguf, hub id).
        calibration: calibration name or JSON path for :func:`dataeff.calibration.get_calibration`;
            empty (the default): the model's own (:func:`dataeff.defaults.calibration_for`).
        chat_template: prompt the model through its chat template.
        targets: normalised targets reported (share of the way from zero-shot to ceiling).
        primary_target: the target the stop rule uses.
        label_cap: the most labels the team is willing to give (stop when the prediction is beyond it).
        budgets: fine-tune budget grid (0 = zero-shot).
        max_budget: the learning curve's cut-off N (the calibration's axis; paper: 5000).
        low_confidence_k: size of the low-confidence batch annotated for CoS-Low (paper: 32).
        coslow_draws: LoRA initialisations CoS-Low is averaged over (the spread is reported).
        max_new_tokens: longest greedy answer when scoring confidence.
        max_prompt_tokens: longest prompt the model is run on, in tokens as the model sees it (chat
            template included; default :data:`dataeff.bounds.DEFAULT_MAX_PROMPT_TOKENS`). Longer
            pool items are skipped at bootstrap and reported by id; the rest are scored.
        max_answer_tokens: longest gold answer used for CoS-Low, in tokens (default
            :data:`dataeff.bounds.DEFAULT_MAX_ANSWER_TOKENS`); a longer labeled answer is left out of
            CoS-Low and reported.
        eval_size: held-out evaluation items the team labels once (never trained on).
        batch_min, batch_max: bounds on one labeling request.
        seed: seed of every random choice (LoRA init, subsets, sampling).
        human_score: ceiling score if known (absolute, same metric).
        label_studio_url, label_studio_token_env: the server and the NAME of the env var holding its token.
        tracking_uri: MLflow tracking URI.
        label_studio_project_id: filled in by ``project create``.
        finetune: overrides of :class:`dataeff.finetune.FinetuneSettings` for the loop's fine-tunes.
        fixed_eval_ids: ids of a held-out split given already labeled (else the team labels ``eval_size`` items).
        prelabel: overrides of :class:`dataeff.prelabel.PrelabelSettings` (e.g. ``{"min_accuracy": 0.6}``)
            for the pre-annotations shown to annotators.
        rescore_max_items: when a new fine-tuned adapter is the best model, the loop re-scores at most
            this many unlabeled items at the top of the annotation queue with it and pre-annotates them
            (default 1000, batched); 0 disables re-scoring.
    """

    name: str
    task: TaskSpec
    model: str = "smollm2"
    calibration: str = ""
    chat_template: bool = True
    targets: tuple[float, ...] = TARGETS
    primary_target: float = PRIMARY_TARGET
    label_cap: int = LABEL_CAP
    budgets: tuple[int, ...] = BUDGET_GRID
    max_budget: int = 5000
    low_confidence_k: int = 32
    coslow_draws: int = 3
    max_new_tokens: int = 16
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS
    eval_size: int = 100
    batch_min: int = 25
    batch_max: int = 200
    seed: int = 0
    human_score: float | None = None
    label_studio_url: str = "http://127.0.0.1:8080"
    label_studio_token_env: str = "LABEL_STUDIO_API_KEY"
    tracking_uri: str = "sqlite:///.dataeff/mlflow.db"
    label_studio_project_id: int | None = None
    finetune: dict = field(default_factory=dict)
    fixed_eval_ids: list[str] = field(default_factory=list)
    prelabel: dict = field(default_factory=dict)
    rescore_max_items: int = 1000

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise DataError(f"project name {self.name!r}: use 1-64 letters, digits, '_', '-', '.'")
        self.calibration = self.calibration or calibration_for(self.model)
        if isinstance(self.task, dict):
            task = dict(self.task)
            if task.get("labels") is not None:
                task["labels"] = tuple(task["labels"])
            self.task = TaskSpec(**task)
        self.targets = tuple(float(t) for t in self.targets)
        self.budgets = tuple(sorted(int(b) for b in self.budgets))
        for t in (*self.targets, self.primary_target):
            if not 0 < t < 1:
                raise DataError(f"project {self.name}: target {t} must be in (0, 1) (a share of the achievable gain)")
        if self.rescore_max_items < 0:
            raise DataError(
                f"project {self.name}: rescore_max_items must be >= 0 (0 disables), got {self.rescore_max_items}"
            )
        if any(b > self.max_budget for b in self.budgets):
            raise DataError(f"project {self.name}: budgets {self.budgets} go above the cut-off {self.max_budget}")

    def label_studio_token(self) -> str:
        """The token from the environment variable named by ``label_studio_token_env``."""
        token = os.environ.get(self.label_studio_token_env, "")
        if not token:
            raise DataError(f"project {self.name}: set the Label Studio token in ${self.label_studio_token_env}")
        return token

    def as_dict(self) -> dict:
        d = asdict(self)
        d["task"]["labels"] = list(self.task.labels) if self.task.labels else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ProjectConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DataError(f"project config: unknown keys {sorted(unknown)}")
        return cls(**d)

    def save(self, home: Path | None = None) -> Path:
        path = (home or dataeff_home()) / "projects" / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, name_or_path: str, home: Path | None = None) -> ProjectConfig:
        path = Path(name_or_path)
        if not path.suffix == ".json":
            path = (home or dataeff_home()) / "projects" / f"{name_or_path}.json"
        if not path.exists():
            raise DataError(f"project {name_or_path!r}: no config at {path}; run `dataeff project create` first")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc.msg})") from None
