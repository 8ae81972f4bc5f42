"""A calibration study of one model family: the pure parts (settings, task preparation, per-task results).

``dataeff study`` (driver: :mod:`flows.study`) measures, for each task, what the calibration
``AUC = c * CoS-Low + I`` is fitted on (method.md sections 1-3), on the pipeline the loop uses:

1. the task is split into a pool and a held-out eval split (:func:`prepare_task`);
2. the base model's confidence over the pool, 32 examples drawn from the bottom decile, CoS-Low of
   them over several LoRA draws, and the same statistic on 32 random pool examples (the paper's
   ablation);
3. LoRA fine-tunes on the budget grid and seeds, scored on the eval split;
4. the task's data-efficiency AUC from the mean score per budget, exactly as the paper computes it
   (:func:`task_auc`: :func:`dataeff.efficiency.summarize_curve` with cut-off ``N`` and ceiling
   ``h = max(human score, best mean score)``).

Nothing here talks to MLflow; rendering of ``docs/study.md`` and the fit are in
:mod:`dataeff.study_report`.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dataeff.data import Example, TaskSpec, read_examples
from dataeff.efficiency import MAX_BUDGET, MIN_FINETUNE_BUDGET, summarize_curve
from dataeff.errors import DataError
from dataeff.finetune import FinetuneSettings, gold_answers
from dataeff.metrics import score_predictions
from dataeff.models import LoraSettings

#: The issue's default grid (0 = zero-shot).
DEFAULT_BUDGETS: tuple[int, ...] = (0, 50, 100, 200, 500, 1000)
#: A task whose distinct answers are at most this many is treated as a choice task (JSONL tasks).
MAX_CHOICE_LABELS = 20
_FILE_SUFFIXES = (".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class StudySettings:
    """Everything a study measures with; every field that changes a number is part of the run keys.

    Attributes:
        model: model source for :func:`dataeff.models.load_model` (``"smollm2"``, a folder, a hub id).
        tasks: BIG-bench task names, corpus names (:data:`dataeff.corpora.CORPORA`) or paths of labeled
            JSONL/CSV files (``prompt``, ``answer``).
        budgets: fine-tune budget grid, 0 = zero-shot (sorted, distinct).
        seeds: fine-tune seeds per budget (LoRA init, subset, batch order). Zero-shot is greedy and
            seed-free, so it is evaluated once.
        eval_size: held-out evaluation examples per task (never trained on, never in the pool).
        draws: LoRA initialisations CoS-Low is computed over (seeds ``coslow_seed + d``).
        k: examples CoS-Low is computed on (paper: 32), both low-confidence and random.
        fraction: low-confidence segment (paper: the bottom decile, 0.1).
        max_pool: the pool is a seeded subset of at most this many examples (confidence is scored
            over all of it); ``None`` = no limit.
        max_budget: cut-off N of the AUC's size axis; ``None`` = the largest budget of the grid
            (the paper uses 5000; missing grid budgets up to N count as the best score so far).
        human_scores: ceiling score per task, if known; otherwise the ceiling is the best mean score.
        lora: LoRA adapter of CoS-Low (paper: r 64, alpha 32, all seven projections).
        finetune: LoRA fine-tune and evaluation settings (its ``seed`` is replaced by each of ``seeds``).
        chat_template: prompt through the tokenizer's chat template in every step (confidence,
            CoS-Low, fine-tunes); the default False follows the plain-prompt finding on SmolLM2.
        device: ``"cpu"``/``"cuda"``; ``None`` = cuda when available.
        dtype: ``"fp32"``/``"bf16"``/``"fp16"`` the model is loaded in; ``None`` = the loader's default.
        split_seed: seed of the pool/eval split, the pool subset, the low-confidence and random draws.
        coslow_seed: LoRA seed of CoS-Low's first draw.
        max_new_tokens: longest greedy answer when scoring confidence.
        confidence_batch_size, coslow_batch_size: batch sizes of those two steps.
        name: study name (MLflow experiment); ``None`` = ``study-<model folder name>``.
        family: model family the calibration is saved under; ``None`` = the model's folder name, lower case.
    """

    model: str = "smollm2"
    tasks: tuple[str, ...] = ()
    budgets: tuple[int, ...] = DEFAULT_BUDGETS
    seeds: tuple[int, ...] = (0, 1)
    eval_size: int = 200
    draws: int = 3
    k: int = 32
    fraction: float = 0.1
    max_pool: int | None = 2000
    max_budget: int | None = None
    human_scores: Mapping[str, float] = field(default_factory=dict)
    lora: LoraSettings = LoraSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    chat_template: bool = False
    device: str | None = None
    dtype: str | None = None
    split_seed: int = 0
    coslow_seed: int = 0
    max_new_tokens: int = 16
    confidence_batch_size: int = 16
    coslow_batch_size: int = 8
    name: str | None = None
    family: str | None = None

    def __post_init__(self) -> None:
        budgets = tuple(sorted({int(b) for b in self.budgets}))
        object.__setattr__(self, "budgets", budgets)
        object.__setattr__(self, "seeds", tuple(dict.fromkeys(int(s) for s in self.seeds)))
        object.__setattr__(self, "tasks", tuple(str(t) for t in self.tasks))
        problems = []
        if not budgets or budgets[0] < 0:
            problems.append(f"budgets {self.budgets!r}: give non-negative integers, e.g. 0,50,100")
        if not self.seeds:
            problems.append("seeds: give at least one seed")
        if self.eval_size < 1:
            problems.append(f"eval_size {self.eval_size}: must be >= 1")
        if self.draws < 1:
            problems.append(f"draws {self.draws}: must be >= 1")
        if self.k < 2:
            problems.append(f"k {self.k}: CoS-Low needs at least 2 examples")
        if not 0 < self.fraction <= 1:
            problems.append(f"fraction {self.fraction}: must be in (0, 1]")
        if self.max_pool is not None and self.max_pool < self.k:
            problems.append(f"max_pool {self.max_pool}: must be >= k ({self.k})")
        if self.max_budget is not None and (self.max_budget <= 1 or self.max_budget < budgets[-1]):
            problems.append(f"max_budget {self.max_budget}: must be > 1 and >= the largest budget {budgets[-1]}")
        if len(set(self.tasks)) != len(self.tasks):
            problems.append(f"tasks {list(self.tasks)}: a task is listed twice")
        if problems:
            raise DataError("study settings: " + "; ".join(problems))

    @property
    def cutoff(self) -> int:
        """N of the AUC: ``max_budget`` or the largest budget of the grid."""
        return int(self.max_budget or self.budgets[-1])

    @property
    def family_name(self) -> str:
        return self.family or Path(self.model).name.lower()

    @property
    def study_name(self) -> str:
        return self.name or f"study-{Path(self.model).name}"

    def finetune_for(self, seed: int) -> FinetuneSettings:
        """The fine-tune settings of one seed (chat template and dtype from the study)."""
        return replace(self.finetune, seed=int(seed), chat_template=self.chat_template)

    def as_dict(self) -> dict:
        """Plain JSON-ready values (provenance and keys)."""
        d = asdict(self)
        d["lora"] = self.lora.as_dict()
        d["finetune"] = self.finetune.as_dict()
        d["human_scores"] = dict(self.human_scores)
        d["cutoff"] = self.cutoff
        return d

    def method_hash(self) -> str:
        """Hash of the settings that change a task's numbers (not the task list, name or device)."""
        d = self.as_dict()
        for key in ("tasks", "name", "family", "device", "human_scores", "cutoff", "max_budget", "budgets", "seeds"):
            d.pop(key)
        d["finetune"].pop("seed", None)
        d["finetune"].pop("device", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- tasks


@dataclass
class PreparedTask:
    """A task ready to be measured.

    Attributes:
        name: short name (BIG-bench name or the file's stem).
        source: ``"bigbench:<name>"`` or the file path.
        spec: labels and metric.
        pool: training/unlabeled pool (confidence, CoS-Low draws and fine-tune subsets come from it).
        eval: held-out evaluation split.
        budgets: the grid budgets this pool can serve.
        dropped: grid budgets larger than the pool (not measured).
        messages: what the user should know (dropped budgets, pool subsampling).
    """

    name: str
    source: str
    spec: TaskSpec
    pool: list[Example]
    eval: list[Example]
    budgets: tuple[int, ...]
    dropped: tuple[int, ...] = ()
    messages: list[str] = field(default_factory=list)


def _is_file_task(task: str) -> bool:
    return Path(task).suffix.lower() in _FILE_SUFFIXES or Path(task).exists()


def load_task(task: str, *, seed: int = 0) -> tuple[TaskSpec, list[Example], str]:
    """``(spec, examples, source)`` of a labeled JSONL/CSV file, a corpus of :mod:`dataeff.corpora` or a BIG-bench task.

    A file task is a choice task when it has at most :data:`MAX_CHOICE_LABELS` distinct answers.

    Raises:
        DataError: a file that does not exist or has bad rows; an unknown BIG-bench name (similar
            names listed).
    """
    if _is_file_task(task):
        path = Path(task)
        if not path.is_file():
            raise DataError(
                f"task {task!r}: no such file; give a BIG-bench task name or a labeled JSONL/CSV "
                "file with 'prompt' and 'answer'"
            )
        examples = read_examples(path)
        labels = sorted({e.answer for e in examples if e.answer is not None})  # all have one (read_examples)
        spec = TaskSpec(name=path.stem, labels=tuple(labels) if len(labels) <= MAX_CHOICE_LABELS else None)
        return spec, examples, str(path)
    from dataeff import corpora

    if task in corpora.CORPORA:  # bbc_news, tweet_sentiment, spam_assassin (fetched once, then offline)
        spec, examples = corpora.load_corpus(task, seed=seed)
        return spec, examples, f"corpus:{task}"
    from dataeff.bigbench import load_bigbench_task

    try:
        spec, examples = load_bigbench_task(task, seed=seed)
    except DataError as exc:
        raise DataError(f"task {task!r}: {exc}") from None
    return spec, examples, f"bigbench:{task}"


def prepare_task(
    task: str, settings: StudySettings, *, loaded: tuple[TaskSpec, list[Example], str] | None = None
) -> PreparedTask:
    """Split a task into pool and eval split and decide which budgets it can serve.

    The eval split is ``eval_size`` examples (seeded); the pool is the rest, a seeded subset of at
    most ``max_pool``. Budgets above the pool size are dropped, with a message naming them.

    Raises:
        DataError: the task has too few examples for an eval split of ``eval_size`` plus ``k``
            pool examples (both numbers named).
    """
    from dataeff.bigbench import split_examples

    spec, examples, source = loaded if loaded is not None else load_task(task, seed=settings.split_seed)
    n = len(examples)
    if n < settings.eval_size + settings.k:
        raise DataError(
            f"task {spec.name!r} has {n} examples: too few for an eval split of {settings.eval_size} "
            f"plus {settings.k} pool examples for CoS-Low; lower --eval-size or add examples"
        )
    ids = [e.id for e in examples]
    dupes = sorted(str(i) for i, c in Counter(ids).items() if c > 1)
    if None in ids or dupes:
        raise DataError(f"task {spec.name!r}: every example needs a distinct id (repeated: {dupes[:5]}); fix the file")
    pool, ev = split_examples(examples, settings.eval_size, settings.split_seed)
    messages = []
    if settings.max_pool is not None and len(pool) > settings.max_pool:
        keep = np.sort(np.random.default_rng(settings.split_seed).permutation(len(pool))[: settings.max_pool])
        messages.append(f"pool subsampled to {settings.max_pool} of {len(pool)} examples (max_pool)")
        pool = [pool[i] for i in keep]
    budgets, dropped = split_budgets(settings.budgets, len(pool))
    if dropped:
        messages.append(budget_message(spec.name, len(pool), budgets, dropped))
    return PreparedTask(
        name=spec.name,
        source=source,
        spec=spec,
        pool=pool,
        eval=ev,
        budgets=budgets,
        dropped=dropped,
        messages=messages,
    )


def split_budgets(budgets: Sequence[int], pool_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(kept, dropped)``: the budgets a pool of ``pool_size`` labeled examples can train on, and the rest."""
    kept = tuple(b for b in sorted(budgets) if b <= pool_size)
    return kept, tuple(b for b in sorted(budgets) if b > pool_size)


def budget_message(task: str, pool_size: int, kept: Sequence[int], dropped: Sequence[int]) -> str:
    """The message for budgets a task is too small for."""
    return (
        f"task {task!r}: its pool of {pool_size} examples is too small for budget(s) "
        f"{', '.join(map(str, dropped))} (dropped); measured: {', '.join(map(str, kept)) or 'none'}"
    )


def random_sample(pool: Sequence[Example], k: int, seed: int) -> list[Example]:
    """``k`` pool examples drawn uniformly (seeded, without replacement): the paper's random ablation."""
    if len(pool) < k:
        raise DataError(f"the pool has {len(pool)} examples, fewer than k={k}")
    idx = np.sort(np.random.default_rng([seed, 1]).choice(len(pool), size=k, replace=False))
    return [pool[i] for i in idx]


# --------------------------------------------------------------------------- reference levels


def chance_level(spec: TaskSpec, eval_examples: Sequence[Example]) -> float | None:
    """Expected score of a uniform guess among the allowed answers; ``None`` for a free-form task.

    A shared label set gives ``1 / len(labels)``; per-example options (``meta["choices"]``) give
    the mean of ``1 / len(choices)``.
    """
    per_example = [e.meta.get("choices") for e in eval_examples]
    choices = [c for c in per_example if isinstance(c, list) and c]
    if per_example and len(choices) == len(per_example):
        return float(np.mean([1.0 / len(c) for c in choices]))
    if spec.labels:
        return 1.0 / len(spec.labels)
    return None


def majority_answer(pool: Sequence[Example]) -> str | None:
    """The most frequent answer of the pool (ties: the first seen), ``None`` without answers."""
    answers = [e.answer for e in pool if e.answer is not None and e.answer.strip()]
    return Counter(answers).most_common(1)[0][0] if answers else None


def majority_score(pool: Sequence[Example], eval_examples: Sequence[Example], spec: TaskSpec) -> float | None:
    """Eval score (the task's metric) of always answering the pool's most frequent answer."""
    answer = majority_answer(pool)
    if answer is None or not eval_examples:
        return None
    return score_predictions([answer] * len(eval_examples), gold_answers(eval_examples), spec.metric)


# --------------------------------------------------------------------------- AUC


def task_auc(means: Mapping[int, float], cutoff: int = MAX_BUDGET, human_score: float | None = None) -> dict:
    """The paper's data-efficiency AUC of measured mean scores, with what it used.

    :func:`dataeff.efficiency.summarize_curve`: budgets 1-49 are not part of the paper's curve and
    are ignored; grid budgets ``50..N`` without a result count as the best score so far; the ceiling
    is ``max(human score, best kept mean)``.

    Returns:
        ``{"auc", "ceiling", "cutoff", "note"}``; ``auc`` and ``ceiling`` are ``None`` (with the
        reason in ``note``) when there is no zero-shot point or the curve is flat.
    """
    out: dict[str, Any] = {"auc": None, "ceiling": None, "cutoff": int(cutoff), "note": ""}
    small = sorted(b for b in means if 0 < b < MIN_FINETUNE_BUDGET)
    notes = []
    if small:
        notes.append(
            f"budget(s) {', '.join(map(str, small))} below {MIN_FINETUNE_BUDGET} are not part of the paper's AUC"
        )
    if 0 not in means:
        notes.append("no zero-shot score")
        out["note"] = "; ".join(notes)
        return out
    try:
        summary = summarize_curve({int(b): float(s) for b, s in means.items()}, human_score, int(cutoff))
    except DataError as exc:
        notes.append(f"AUC undefined: {exc}")
    else:
        out["auc"], out["ceiling"] = summary["extrapolation_auc"], summary["human_eval"]
    out["note"] = "; ".join(notes)
    return out


# --------------------------------------------------------------------------- results


@dataclass
class TaskResult:
    """Everything a study measured on one task (what ``docs/study.md`` shows in its row).

    Attributes:
        task, source, n_pool, n_eval, metric: what was measured on.
        chance, majority: uniform-guess score and the majority-class score on the eval split.
        budgets, dropped: measured grid budgets and those the pool was too small for.
        scores: ``{budget: {seed: score}}`` of the fine-tunes that succeeded.
        failures: ``{"budget", "seed", "error"}`` of fine-tunes that raised.
        coslow_low, coslow_random: ``CosLowResult.as_dict()`` of the low-confidence and random draws.
        auc, ceiling, cutoff, auc_note: from :func:`task_auc`.
        seconds: wall time of this task's measurements (summed from the stored runs).
        messages: warnings about the task (dropped budgets, small pool, ...).
    """

    task: str
    source: str
    n_pool: int
    n_eval: int
    metric: str
    chance: float | None = None
    majority: float | None = None
    budgets: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    scores: dict[int, dict[int, float]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    coslow_low: dict | None = None
    coslow_random: dict | None = None
    auc: float | None = None
    ceiling: float | None = None
    cutoff: int = MAX_BUDGET
    auc_note: str = ""
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)

    def means(self) -> dict[int, float]:
        return {b: float(np.mean(list(s.values()))) for b, s in sorted(self.scores.items()) if s}

    def sds(self) -> dict[int, float]:
        """Sample sd over seeds (0 for one seed)."""
        return {
            b: float(np.std(list(s.values()), ddof=1)) if len(s) > 1 else 0.0
            for b, s in sorted(self.scores.items())
            if s
        }

    def finish(self, human_score: float | None = None) -> TaskResult:
        """Fill ``auc``, ``ceiling`` and ``auc_note`` from the measured means."""
        res = task_auc(self.means(), self.cutoff, human_score)
        self.auc, self.ceiling, self.auc_note = res["auc"], res["ceiling"], res["note"]
        return self

    def as_dict(self) -> dict:
        d = asdict(self)
        d["scores"] = {str(b): {str(s): v for s, v in seeds.items()} for b, seeds in self.scores.items()}
        return d

    @classmethod
    def from_dict(cls, data: Mapping) -> TaskResult:
        d = dict(data)
        d["scores"] = {int(b): {int(s): float(v) for s, v in seeds.items()} for b, seeds in d.get("scores", {}).items()}
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def restrict_result(
    result: TaskResult, budgets: Sequence[int], dropped: Sequence[int], cutoff: int, human_score: float | None = None
) -> TaskResult:
    """A copy of ``result`` measured on fewer budgets: scores and failures outside ``budgets`` removed,
    the AUC recomputed at ``cutoff`` (the same fine-tunes, so nothing is measured again).

    Args:
        result: a finished task measured on a grid that holds every budget in ``budgets``.
        budgets: the smaller grid (sizes in labels).
        dropped: budgets of the smaller grid the pool was too small for.
        cutoff: N of the AUC for the smaller grid.
        human_score: the task's human score, if any (as in :func:`task_auc`).
    """
    keep = set(int(b) for b in budgets)
    out = TaskResult.from_dict(result.as_dict())
    out.scores = {b: dict(v) for b, v in out.scores.items() if b in keep}
    out.failures = [f for f in out.failures if int(f.get("budget", -1)) in keep]
    left = sorted(set(out.budgets) - keep)
    stale = budget_message(out.task, out.n_pool, out.budgets, out.dropped) if out.dropped else None
    out.messages = [m for m in out.messages if m != stale]  # about the larger grid's budgets
    if dropped:
        out.messages.append(budget_message(out.task, out.n_pool, sorted(keep), dropped))
    out.budgets, out.dropped, out.cutoff = sorted(keep), list(dropped), int(cutoff)
    if left:
        out.messages.append(f"restricted from a kept result on a larger grid (budgets {left} not used)")
    return out.finish(human_score)


def coslow_mean(result: Mapping | None) -> float | None:
    """Mean CoS-Low over the draws of a ``CosLowResult.as_dict()`` (``None`` when missing)."""
    if not result:
        return None
    value = result.get("mean", result.get("coslow"))
    return None if value is None or not math.isfinite(value) else float(value)


def catch_warnings_as_messages(func, *args, **kwargs):
    """``(result, [warning texts])`` of ``func(*args, **kwargs)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = func(*args, **kwargs)
    return out, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
