"""CoS-Low: median pairwise cosine of the labeled low-confidence examples' LoRA gradients.

See docs/method-notes.md (and the paper's method, section 2). The LoRA adapter is created with a fixed seed (its random ``A``
decides what CoS-Low sees), used for the gradients and removed again, so the base model is left as
it was and repeated calls are independent and reproducible.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from dataeff.bounds import DEFAULT_MAX_ANSWER_TOKENS, DEFAULT_MAX_PROMPT_TOKENS, split_by_token_bounds
from dataeff.data import Example, require_labeled
from dataeff.errors import DataError
from dataeff.gradients import lora_gradient_gram_with_plan
from dataeff.lora_reseed import reseed_lora
from dataeff.models import DEFAULT_DTYPE, LoadedModel, LoraSettings, attach_lora, dtype_name


def coslow_from_gram(gram: np.ndarray) -> float:
    """Median over pairs ``i < j`` of ``G[i, j] / sqrt(G[i, i] * G[j, j])``.

    Args:
        gram: symmetric ``(n, n)`` Gram matrix of gradients, ``n >= 2``.

    Raises:
        DataError: fewer than 2 rows, or an example whose gradient has zero norm (names its row).
    """
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"expected a square Gram matrix, got shape {g.shape}")
    n = g.shape[0]
    if n < 2:
        raise DataError(f"CoS-Low needs at least 2 examples, got {n}")
    diag = np.diag(g)
    bad = np.flatnonzero(~(diag > 0))
    if bad.size:
        raise DataError(
            f"the gradient of example row(s) {bad.tolist()} has zero (or invalid) norm: its answer "
            "tokens give the model no signal; check those labels or drop the rows"
        )
    norms = np.sqrt(diag)
    cos = g / np.outer(norms, norms)
    iu = np.triu_indices(n, k=1)
    return float(np.median(cos[iu]))


@dataclass
class CosLowResult:
    """Outcome of :func:`compute_coslow`.

    Attributes:
        coslow: CoS-Low of the first draw (seed ``seed``), the reproducible headline value.
        draws: CoS-Low of each draw ``d`` (LoRA seed ``seed + d``).
        mean, std: mean and population standard deviation over the draws (std 0 for one draw).
        n_examples: number of labeled examples used.
        seconds: wall time of the whole computation.
        lora: the LoRA settings as a flat dict (``LoraSettings.as_dict``).
        seed: seed of the first draw.
        chat_template: whether prompts were wrapped in the chat template.
        projection_dim: ``None`` (exact) or the sketch size.
        skipped: ``{"id", "field", "tokens", "limit", "reason"}`` of each example left out because its
            prompt or answer is beyond the token bounds (:func:`dataeff.bounds.split_by_token_bounds`).
        dtype, device: the model's dtype (``"fp32"``, ``"bf16"``, ``"fp16"``) and device (``"cpu"``,
            ``"cuda"``) the gradients were computed in; CoS-Low depends on the dtype
            (:data:`dataeff.models.DEFAULT_DTYPE`).
        batch_size: examples per forward/backward pass actually used (chosen for the device when
            ``compute_coslow`` got ``batch_size=None``; smaller after an out-of-memory retry).
        gram: how the per-example gradient rows were kept (:meth:`dataeff.gradients.GramPlan.summary`
            of the first draw: ``storage``, ``batch_size``, ``passes``, ``rows_mb``, ...).
    """

    coslow: float
    draws: list[float]
    mean: float
    std: float
    n_examples: int
    seconds: float
    lora: dict = field(default_factory=dict)
    seed: int = 0
    chat_template: bool = False
    projection_dim: int | None = None
    skipped: list[dict] = field(default_factory=list)
    dtype: str = "fp32"
    device: str = "cpu"
    batch_size: int | None = None
    gram: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CosLowResult:
        """The inverse of :meth:`as_dict` (e.g. a result read back from a tracking store).

        Raises:
            DataError: a field is missing or unknown (the dict was not written by :meth:`as_dict`).
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DataError(f"CoS-Low result: unknown field(s) {unknown}; expected those of CosLowResult.as_dict()")
        try:
            return cls(**data)
        except TypeError as exc:
            raise DataError(f"CoS-Low result: {exc}") from None


def compute_coslow(
    loaded: LoadedModel,
    examples: Sequence[Example],
    *,
    lora: LoraSettings = LoraSettings(),
    seed: int = 0,
    draws: int = 1,
    chat_template: bool = False,
    batch_size: int | None = None,
    projection_dim: int | None = None,
    progress: bool = True,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
    memory_budget: int | None = None,
    storage: str = "auto",
) -> CosLowResult:
    """CoS-Low of labeled ``examples`` under fresh LoRA adapters, over ``draws`` seeded initialisations.

    For draw ``d`` the adapter is the one ``attach_lora(model, lora, seed + d)`` creates (``torch.manual_seed``
    right before peft): draw 0 attaches it, later draws re-draw its weights in place with the same
    values (:func:`dataeff.lora_reseed.reseed_lora`, 5x cheaper than unloading and attaching again);
    the model is in eval mode (LoRA dropout off), the Gram matrix comes from
    :func:`dataeff.gradients.lora_gradient_gram` and the adapter is unloaded at the end.

    ``batch_size=None`` (default) lets the device choose (8 on CPU; on CUDA from free memory and
    sequence lengths, all examples in one batch when they fit: :func:`dataeff.device_memory.coslow_batch_size`).
    ``memory_budget`` / ``storage``: where the per-example gradient rows go when they do not fit one
    batch (:func:`dataeff.gradients.plan_gram`; every choice is exact). The batch size and storage
    used are recorded in :attr:`CosLowResult.batch_size` and :attr:`CosLowResult.gram`.

    An example whose prompt is beyond ``max_prompt_tokens`` or whose answer is beyond
    ``max_answer_tokens`` (see :func:`dataeff.bounds.split_by_token_bounds`) is left out, with a
    warning, and listed in :attr:`CosLowResult.skipped`; CoS-Low is taken over the others.

    Raises:
        DataError: fewer than 2 labeled examples (or an unlabeled one among them), or fewer than 2
            left within the token bounds (the left-out ones are named).
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    require_labeled(examples, 2, "CoS-Low")
    unlabeled = [
        e.id if e.id is not None else i for i, e in enumerate(examples) if e.answer is None or not e.answer.strip()
    ]
    if unlabeled:
        raise DataError(f"CoS-Low: examples {unlabeled[:5]} have no gold answer; pass labeled examples only")
    examples, rejected = split_by_token_bounds(
        loaded.tokenizer,
        examples,
        max_prompt_tokens=max_prompt_tokens,
        max_answer_tokens=max_answer_tokens,
        chat_template=chat_template,
    )
    for item in rejected:
        warnings.warn(f"CoS-Low: left out example {item.id}: {item.reason}", stacklevel=2)
    if len(examples) < 2:
        named = "; ".join(f"{item.id}: {item.reason}" for item in rejected)
        raise DataError(
            f"CoS-Low needs at least 2 examples within the token bounds, {len(examples)} left; left out: {named}"
        )
    if dtype_name(loaded.dtype) != DEFAULT_DTYPE:
        warnings.warn(
            f"CoS-Low in {dtype_name(loaded.dtype)}: calibrations are fitted in {DEFAULT_DTYPE} and this "
            f"dtype moves CoS-Low (bf16: about -0.1 on SmolLM2); load the model with dtype='{DEFAULT_DTYPE}'",
            stacklevel=2,
        )
    start = time.perf_counter()
    model = loaded.model
    was_training = model.training
    values = []
    plans = []
    peft_model: Any = None

    def detach(adapted: Any) -> None:
        adapted.unload()  # takes the adapters out of ``model`` in place (peft returns ``model`` itself)
        if hasattr(model, "peft_config"):
            del model.peft_config

    try:
        for d in range(draws):
            # draw 0 attaches; later draws re-draw the same adapter's weights in place (as a fresh attach would)
            if peft_model is None or not reseed_lora(peft_model, seed + d):
                if peft_model is not None:
                    detach(peft_model)
                    peft_model = None
                peft_model = attach_lora(model, lora, seed + d)
            peft_model.eval()
            gram, plan = lora_gradient_gram_with_plan(
                peft_model,
                loaded.tokenizer,
                examples,
                chat_template=chat_template,
                batch_size=batch_size,
                projection_dim=projection_dim,
                seed=seed + d,
                progress=progress,
                memory_budget=memory_budget,
                storage=storage,
            )
            plans.append(plan)
            values.append(coslow_from_gram(gram))
    finally:
        if peft_model is not None:
            detach(peft_model)
    model.train(was_training)
    return CosLowResult(
        coslow=values[0],
        draws=values,
        mean=float(np.mean(values)),
        std=float(np.std(values)),
        n_examples=len(examples),
        seconds=time.perf_counter() - start,
        lora=lora.as_dict(),
        seed=seed,
        chat_template=chat_template,
        projection_dim=projection_dim,
        skipped=[r.as_dict() for r in rejected],
        dtype=dtype_name(loaded.dtype),
        device=loaded.device.type,
        batch_size=plans[0].batch_size,
        gram=plans[0].summary(),
    )
