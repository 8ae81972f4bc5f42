"""LoRA fine-tune on a labeled budget and evaluation on a held-out set (one point of a data-efficiency curve).

A plain torch loop: AdamW at a constant learning rate, loss on the answer tokens only (prompt
tokens masked out, the end-of-turn/eos token after the answer included so the model learns to stop),
right-padded length-sorted batches visited in a seeded random order, a tqdm bar showing the loss.

The base model is shared: :func:`run_finetune` attaches fresh adapters, trains, evaluates, saves
the adapter if asked, and then removes the adapters and restores every parameter's
``requires_grad`` flag, so one loaded model serves every budget of a curve.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dataeff.data import Example, TaskSpec, require_labeled
from dataeff.errors import DataError
from dataeff.generation import generate_answers, length_batches
from dataeff.metrics import score_predictions
from dataeff.models import (
    ALL_LINEAR_TARGETS,
    LoadedModel,
    LoraSettings,
    attach_lora,
    dtype_name,
    encode_prompt_answer,
    model_device,
    resolve_dtype,
)

FINETUNE_LORA = LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=ALL_LINEAR_TARGETS)
"""The loop's fine-tune adapter: smaller than CoS-Low's (r=64), which only measures gradients."""


@dataclass(frozen=True)
class FinetuneSettings:
    """Settings of one LoRA fine-tune and its evaluation.

    Attributes:
        lora: the adapter (:class:`~dataeff.models.LoraSettings`; default :data:`FINETUNE_LORA`:
            r=8, alpha=16, dropout 0.05 on all seven projections - smaller than CoS-Low's r=64).
        lr: AdamW learning rate, constant.
        epochs: passes over the training subset (ignored when ``max_steps`` is set).
        batch_size: examples per optimizer step.
        max_steps: exact number of optimizer steps when set (the data is cycled as needed).
        seed: seeds LoRA A's initialisation, dropout, and the batch order.
        chat_template: wrap each prompt as a user turn of the tokenizer's chat template (the answer
            is the assistant's reply); without it (the default) the answer follows the prompt after
            one space. Default False: SmolLM2-135M-Instruct followed the answer format of prompts
            ending in a cue ("Intent:", "Answer:") far more often without its template (intent
            recognition zero-shot: 96% vs 29% of answers were a label).
        max_length: tokens of prompt + answer kept per training example; longer prompts lose their
            beginning (the answer is always kept).
        device: None = wherever the loaded model is; otherwise the model is moved there for the
            run and moved back afterwards.
        dtype: None = the model's own dtype; ``"bf16"``/``"fp16"`` run the forward passes under
            ``torch.autocast`` (CUDA). Weights are never cast.
        eval_batch_size: prompts per generation batch during evaluation.
        max_new_tokens: generation limit of an answer during evaluation.
        stop_at_newline: an evaluation answer ends at its first line break (a zero-shot model
            that does not emit eos stops there instead of running to ``max_new_tokens``).
    """

    lora: LoraSettings = field(default_factory=lambda: FINETUNE_LORA)
    lr: float = 2e-4
    epochs: int = 3
    batch_size: int = 16
    max_steps: int | None = None
    seed: int = 0
    chat_template: bool = False
    max_length: int = 256
    device: str | None = None
    dtype: str | None = None
    eval_batch_size: int = 32
    max_new_tokens: int = 8
    stop_at_newline: bool = True

    def __post_init__(self) -> None:
        checks = {
            "lora.r": self.lora.r >= 1,
            "lora.alpha": self.lora.alpha > 0,
            "lora.dropout": 0 <= self.lora.dropout < 1,
            "lr": self.lr > 0,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "max_length": self.max_length >= 2,
            "eval_batch_size": self.eval_batch_size >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            values = {**{f"lora.{k}": v for k, v in asdict(self.lora).items()}, **asdict(self)}
            raise DataError(f"FinetuneSettings: invalid {', '.join(f'{k}={values[k]!r}' for k in bad)}")

    def as_dict(self) -> dict:
        """Flat dict of plain values (tracking parameters and run keys): the adapter's
        ``r, alpha, dropout, target_modules`` (comma-joined) beside the other fields."""
        d = asdict(self)
        d.pop("lora")
        return {**self.lora.as_dict(), **d}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneSettings:
        """The inverse of :meth:`as_dict`; also takes a project's ``finetune`` overrides, whose LoRA
        keys (``r``, ``alpha``, ``dropout``, ``target_modules`` as a list or comma-joined) sit beside
        the others. Unknown keys raise :class:`DataError` naming them."""
        data = dict(data)
        lora_keys = {f.name for f in fields(LoraSettings)}
        adapter = {k: data.pop(k) for k in list(data) if k in lora_keys}
        if isinstance(adapter.get("target_modules"), str):
            adapter["target_modules"] = str(adapter["target_modules"]).split(",")
        if "target_modules" in adapter:
            adapter["target_modules"] = tuple(adapter["target_modules"])
        known = {f.name for f in fields(cls)} - {"lora"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"fine-tune settings: unknown keys {unknown}; known: {sorted(known | lora_keys)}")
        return cls(lora=replace(FINETUNE_LORA, **adapter), **data)


@dataclass
class EvalResult:
    """Score of a model on an evaluation set.

    Attributes:
        score: mean exact match or token F1 in [0, 1] (the task's metric).
        n: number of evaluation examples.
        predictions: the generated answers, in the order of the examples.
        metric: the metric used.
    """

    score: float
    n: int
    predictions: list[str]
    metric: str = "exact_match"


@dataclass
class FinetuneResult:
    """One point of a data-efficiency curve.

    Attributes:
        budget: labeled examples requested (0 = zero-shot).
        score: evaluation score after fine-tuning on ``budget`` examples.
        zero_shot: True when no training happened (budget 0).
        n_train, n_eval: examples trained on and evaluated.
        seconds_train, seconds_eval: wall-clock seconds.
        adapter_dir: where the LoRA adapter was saved, if anywhere.
        settings: :meth:`FinetuneSettings.as_dict`.
        steps: optimizer steps taken.
        final_loss: mean training loss of the last epoch's worth of steps (NaN for zero-shot).
        predictions: the evaluation generations.
        dtype, device: the model's weights dtype (``"fp32"``, ...; an autocast ``settings.dtype``
            is in ``settings``) and the device it ran on.
    """

    budget: int
    score: float
    zero_shot: bool
    n_train: int
    n_eval: int
    seconds_train: float
    seconds_eval: float
    adapter_dir: str | None
    settings: dict
    steps: int = 0
    final_loss: float = float("nan")
    predictions: list[str] = field(default_factory=list, repr=False)
    dtype: str = "fp32"
    device: str = "cpu"

    def as_dict(self) -> dict:
        """Plain values without the predictions (for tracking)."""
        d = asdict(self)
        d.pop("predictions")
        return d

    @classmethod
    def from_dict(cls, data: dict) -> FinetuneResult:
        """The inverse of :meth:`as_dict` (the predictions come back empty), e.g. a result kept on disk."""
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Subsets
# --------------------------------------------------------------------------------------------
def _order(examples: Sequence[Example], seed: int) -> list[int]:
    ids = [e.id for e in examples]
    if all(i is not None for i in ids) and len(set(ids)) == len(ids):
        key = lambda i: hashlib.blake2b(f"{seed}:{ids[i]}".encode(), digest_size=8).digest()  # noqa: E731
        return sorted(range(len(examples)), key=key)
    return np.random.default_rng(seed).permutation(len(examples)).tolist()


def nested_subset(examples: Sequence[Example], budget: int, seed: int = 0) -> list[Example]:
    """The first ``budget`` examples of one seeded permutation: subsets are nested across budgets.

    When every example has a distinct ``id``, the permutation sorts by a seeded hash of the id, so
    the subset does not depend on the order the examples arrive in (e.g. from an annotation tool);
    otherwise it is a seeded permutation of positions.

    Args:
        examples: the labeled pool.
        budget: subset size, 0 <= budget <= len(examples).
        seed: permutation seed.

    Raises:
        DataError: budget negative, not an integer, or larger than the pool (both numbers named).
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise DataError(f"budget must be an integer number of examples, got {budget!r}")
    if budget < 0:
        raise DataError(f"budget must be >= 0, got {budget}")
    if budget > len(examples):
        raise DataError(
            f"budget {budget} exceeds the {len(examples)} labeled examples available; label {budget - len(examples)} more or lower the budget"
        )
    return [examples[i] for i in _order(examples, seed)[:budget]]


# --------------------------------------------------------------------------------------------
# Encoding and batches
# --------------------------------------------------------------------------------------------
def _answer_text(prompt: str, answer: str, chat_template: bool) -> str:
    if chat_template or not prompt or prompt[-1].isspace():
        return answer
    return " " + answer


def encode_training_example(
    tokenizer, example: Example, chat_template: bool, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one training example.

    Returns:
        ``(input_ids, labels)`` of equal length <= ``max_length``: labels are -100 on prompt tokens
        and the token ids on the answer tokens plus a final eos token.
    """
    if example.answer is None or not str(example.answer).strip():
        raise DataError(f"example {example.id!r} has no answer; only labeled examples can be trained on")
    ids, n_prompt = encode_prompt_answer(
        tokenizer, example.prompt, _answer_text(example.prompt, example.answer, chat_template), chat_template
    )
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    prompt_ids, answer_ids = ids[:n_prompt], ids[n_prompt:]
    answer_ids = answer_ids[: max_length - 1]
    keep = min(len(prompt_ids), max_length - len(answer_ids))
    prompt_ids = prompt_ids[len(prompt_ids) - keep :]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def _collate(encoded, idx: list[int], pad_id: int, device) -> dict[str, torch.Tensor]:
    width = max(len(encoded[i][0]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), -100, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        x, y = encoded[i]
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _autocast(device: torch.device, dtype: str | None):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    dt = resolve_dtype(device, dtype)
    return torch.autocast(device.type, dtype=dt, enabled=dt != torch.float32)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainedLora:
    """What :func:`finetune_lora` returns.

    Attributes:
        model: the trained peft model, in eval mode (its adapters sit inside the loaded model).
        steps: optimizer steps taken.
        final_loss: mean training loss of the last epoch's worth of steps (NaN when no step was taken).
    """

    model: Any
    steps: int
    final_loss: float


def finetune_lora(
    loaded: LoadedModel, train: Sequence[Example], settings: FinetuneSettings | None = None, progress: bool = True
) -> TrainedLora:
    """Attach fresh LoRA adapters to ``loaded.model`` and train them on ``train``.

    The adapters are injected into the loaded model itself (peft wraps it in place): call
    :func:`remove_adapters` when done, or use :func:`run_finetune`, which does.

    Args:
        loaded: the base model and tokenizer.
        train: labeled examples (all of them are used; see :func:`nested_subset`).
        settings: defaults when None.
        progress: show a tqdm bar with the running loss.

    Returns:
        The trained peft model (eval mode) with its step count and final loss.

    Raises:
        DataError: no examples, or an example without an answer.
    """
    settings = settings or FinetuneSettings()
    if not train:
        raise DataError("finetune_lora: no training examples; use budget 0 for a zero-shot evaluation")
    tok = loaded.tokenizer
    encoded = [encode_training_example(tok, e, settings.chat_template, settings.max_length) for e in train]
    batches = length_batches([len(ids) for ids, _ in encoded], settings.batch_size, longest_first=False)
    steps = settings.max_steps or settings.epochs * len(batches)

    peft_model = attach_lora(loaded.model, settings.lora, seed=settings.seed)
    device = model_device(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    rng = np.random.default_rng(settings.seed)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    losses: list[float] = []
    peft_model.train()
    bar = tqdm(total=steps, desc=f"LoRA fine-tune ({len(train)} examples)", disable=not progress, leave=False)
    try:
        step = 0
        while step < steps:
            for b in rng.permutation(len(batches)):
                if step >= steps:
                    break
                batch = _collate(encoded, batches[b], pad_id, device)
                with _autocast(device, settings.dtype):
                    loss = peft_model(**batch).loss
                if not torch.isfinite(loss):
                    raise DataError(
                        f"training loss became {loss.item()} at step {step + 1}; lower lr (now {settings.lr})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    except BaseException:
        peft_model.unload()  # never leave adapters injected into the shared base model
        raise
    finally:
        bar.close()
        peft_model.eval()
    tail = losses[-len(batches) :]
    return TrainedLora(peft_model, len(losses), float(np.mean(tail)) if tail else math.nan)


def remove_adapters(peft_model, requires_grad: dict[str, bool] | None = None):
    """Take LoRA adapters out of a peft-wrapped model without merging them; return the base model.

    peft unloads in place: the base model returned is the model the adapters were attached to
    (``loaded.model`` stays valid). ``requires_grad`` (parameter name -> flag, as before the
    adapters were attached) is restored when given.
    """
    base = peft_model.unload() if hasattr(peft_model, "peft_config") else peft_model
    if requires_grad is not None:
        for name, p in base.named_parameters():
            if name in requires_grad:
                p.requires_grad_(requires_grad[name])
    base.eval()
    return base


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def gold_answers(examples: Sequence[Example]) -> list[list[str]]:
    """Acceptable answers per example: ``meta["targets"]`` when present (gold answer first), else the answer."""
    golds = []
    for e in examples:
        if e.answer is None or not str(e.answer).strip():
            raise DataError(f"evaluation example {e.id!r} has no answer; the held-out set must be labeled")
        extra = (
            [str(t) for t in e.meta.get("targets", []) if str(t) != e.answer]
            if isinstance(e.meta.get("targets"), list)
            else []
        )
        golds.append([e.answer, *extra])
    return golds


def evaluate(
    model,
    tokenizer,
    eval_examples: Sequence[Example],
    task: TaskSpec,
    settings: FinetuneSettings | None = None,
    progress: bool = True,
) -> EvalResult:
    """Greedy answers to the evaluation prompts, scored with the task's metric.

    Args:
        model: a :class:`~dataeff.models.LoadedModel`, a peft model or a plain causal LM.
        tokenizer: its tokenizer (None: take ``model.tokenizer`` of a LoadedModel).
        eval_examples: labeled held-out examples.
        task: gives the metric (exact match uses the label-start rule of :func:`dataeff.metrics.exact_match`).
        settings: chat_template, eval_batch_size and max_new_tokens are used.
        progress: progress bar of the generation.

    Returns:
        :class:`EvalResult` with the score in [0, 1].
    """
    settings = settings or FinetuneSettings()
    if isinstance(model, LoadedModel):
        tokenizer = tokenizer or model.tokenizer
        model = model.model
    if not eval_examples:
        raise DataError("evaluate: the evaluation set is empty; hold out labeled examples first")
    golds = gold_answers(eval_examples)
    was_training = model.training
    model.eval()
    try:
        gens = generate_answers(
            model,
            tokenizer,
            [e.prompt for e in eval_examples],
            batch_size=settings.eval_batch_size,
            max_new_tokens=settings.max_new_tokens,
            chat_template=settings.chat_template,
            progress=progress,
            stop_strings=("\n",) if settings.stop_at_newline else None,
        )
    finally:
        model.train(was_training)
    preds = [g.text for g in gens]
    score = score_predictions(preds, golds, task.metric)
    return EvalResult(score=score, n=len(preds), predictions=preds, metric=task.metric)


# --------------------------------------------------------------------------------------------
# One curve point
# --------------------------------------------------------------------------------------------
def run_finetune(
    loaded: LoadedModel,
    train: Sequence[Example],
    eval: Sequence[Example],
    task: TaskSpec,
    budget: int,
    settings: FinetuneSettings | None = None,
    adapter_dir: str | Path | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune on a nested subset of ``budget`` examples of ``train`` and evaluate on ``eval``.

    Budget 0 evaluates the base model without training (the zero-shot point). The loaded model is
    left as it was: adapters are removed and ``requires_grad`` flags restored, even on error.

    Args:
        loaded: base model and tokenizer (shared across budgets).
        train: labeled pool; the first ``budget`` of :func:`nested_subset` are used.
        eval: labeled held-out examples.
        task: metric and labels.
        budget: number of training examples (0 = zero-shot).
        settings: defaults when None.
        adapter_dir: save the trained LoRA adapter (peft ``save_pretrained`` folder) there.
        progress: tqdm bars.

    Raises:
        DataError: budget larger than the labeled pool (both numbers named), unlabeled examples.
    """
    settings = settings or FinetuneSettings()
    subset = nested_subset(train, budget, settings.seed)
    require_labeled(subset, budget, f"training subset of budget {budget}")
    home = model_device(loaded.model)
    target = torch.device(settings.device) if settings.device else home
    if target != home:
        loaded.model.to(target)
    flags = {n: p.requires_grad for n, p in loaded.model.named_parameters()}
    seconds_train, steps, final_loss, saved = 0.0, 0, math.nan, None
    model = loaded.model
    try:
        if budget > 0:
            t0 = time.perf_counter()
            trained = finetune_lora(loaded, subset, settings, progress=progress)
            seconds_train = time.perf_counter() - t0
            model, steps, final_loss = trained.model, trained.steps, trained.final_loss
            if adapter_dir is not None:
                model.save_pretrained(str(adapter_dir))
                saved = str(adapter_dir)
        t0 = time.perf_counter()
        result = evaluate(model, loaded.tokenizer, eval, task, settings, progress=progress)
        seconds_eval = time.perf_counter() - t0
    finally:
        remove_adapters(model, flags)
        if target != home:
            loaded.model.to(home)
    return FinetuneResult(
        budget=budget,
        score=result.score,
        zero_shot=budget == 0,
        n_train=len(subset),
        n_eval=result.n,
        seconds_train=seconds_train,
        seconds_eval=seconds_eval,
        adapter_dir=saved,
        settings=settings.as_dict(),
        steps=steps,
        final_loss=final_loss,
        predictions=result.predictions,
        dtype=dtype_name(loaded.dtype),
        device=target.type,
    )
