"""Model confidence on unlabeled examples and the low-confidence draw (CoS-Low, step 1-2).

Confidence of an answer = mean, over its answer tokens, of the probability of the chosen token
(greedy answer; end-of-turn, eos and padding tokens excluded; see :mod:`dataeff.generation`).
Perplexity = ``exp(mean(-log p))`` over the same tokens. An EMPTY answer (the model ends its turn at
once) gets confidence 0 and perplexity ``inf``: it is treated as the least confident possible answer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dataeff.data import Example
from dataeff.errors import DataError
from dataeff.generation import Generations, generate_answers
from dataeff.models import LoadedModel


class SmallPoolWarning(UserWarning):
    """The pool is too small for a bottom-decile draw; the k least confident were taken instead."""


@dataclass(frozen=True)
class ConfidenceScore:
    """The model's greedy answer to one example and how sure it was.

    Attributes:
        id: the example's id (``Example.id``, or its index in the input when that is None).
        answer: the decoded greedy answer.
        confidence: mean probability of the chosen answer tokens, in [0, 1]; 0 for an empty answer.
        perplexity: ``exp`` of the mean negative log-probability of the answer tokens; ``inf`` when empty.
        n_tokens: number of answer tokens.
    """

    id: str
    answer: str
    confidence: float
    perplexity: float
    n_tokens: int

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "answer": self.answer,
            "confidence": self.confidence,
            "perplexity": self.perplexity,
            "n_tokens": self.n_tokens,
        }


class ConfidenceScores(list[ConfidenceScore]):
    """What :func:`score_confidence` returns: a plain ``list`` of :class:`ConfidenceScore` in input
    order, with how it was computed (for callers that log it).

    Attributes:
        batch_size: prompts per batch actually used (chosen for the device when ``batch_size=None``).
        decoder: ``"evict"`` (dataeff's decoding loop) or ``"generate"`` (``model.generate``).
    """

    batch_size: int = 0
    decoder: str = ""


def confidence_from_probs(token_probs: Sequence[float]) -> tuple[float, float]:
    """``(confidence, perplexity)`` of an answer from its chosen-token probabilities; ``(0, inf)`` when empty."""
    if len(token_probs) == 0:
        return 0.0, math.inf
    p = np.asarray(token_probs, dtype=np.float64)
    nll = -np.log(np.clip(p, 1e-300, 1.0))
    return float(p.mean()), float(np.exp(nll.mean()))


def score_confidence(
    loaded_or_model,
    tokenizer=None,
    examples: Sequence[Example | str] = (),
    *,
    batch_size: int | None = None,
    max_new_tokens: int = 30,
    chat_template: bool = True,
    progress: bool = True,
    stop_strings: Sequence[str] | None = None,
    evict: bool = True,
) -> ConfidenceScores:
    """Answer every example greedily (batched) and score the answer's confidence.

    Args:
        loaded_or_model: a :class:`dataeff.models.LoadedModel` (its tokenizer is used when
            ``tokenizer`` is None) or a plain causal LM.
        tokenizer: the tokenizer; required with a plain model.
        examples: :class:`Example` items (their ``prompt`` is used; ``answer`` is ignored) or prompt strings.
        batch_size: prompts per batch; ``None`` (default): chosen for the device
            (:func:`dataeff.device_memory.confidence_batch_size`: 16 on CPU, from free memory and
            prompt lengths on CUDA). The value used is :attr:`ConfidenceScores.batch_size`.
        max_new_tokens, chat_template, progress, stop_strings, evict: see
            :func:`dataeff.generation.generate_answers`.

    Returns:
        One :class:`ConfidenceScore` per example, in input order: a :class:`ConfidenceScores` (a
        ``list`` that also records the batch size and decoder used; typed as a plain list so
        callers may rebind it).
    """
    if isinstance(loaded_or_model, LoadedModel):
        model = loaded_or_model.model
        tokenizer = tokenizer if tokenizer is not None else loaded_or_model.tokenizer
    else:
        model = loaded_or_model
    if tokenizer is None:
        raise TypeError("score_confidence needs a tokenizer: pass a LoadedModel or tokenizer=...")
    items = list(examples)
    prompts, ids = [], []
    for i, ex in enumerate(items):
        if isinstance(ex, str):
            prompt, ex_id = ex, None
        elif isinstance(ex, Example):
            prompt, ex_id = ex.prompt, ex.id
        else:
            raise DataError(f"example {i}: expected an Example or a prompt string, got {type(ex).__name__}")
        if not prompt or not prompt.strip():
            raise DataError(f"example {ex_id if ex_id is not None else i}: empty prompt; fill it in or drop the row")
        prompts.append(prompt)
        ids.append(str(ex_id) if ex_id is not None else str(i))
    gens = generate_answers(
        model,
        tokenizer,
        prompts,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        chat_template=chat_template,
        progress=progress,
        stop_strings=stop_strings,
        evict=evict,
    )
    out = ConfidenceScores()
    if isinstance(gens, Generations):
        out.batch_size, out.decoder = gens.batch_size, gens.decoder
    for ex_id, g in zip(ids, gens):
        conf, ppl = confidence_from_probs(g.token_probs)
        out.append(ConfidenceScore(id=ex_id, answer=g.text, confidence=conf, perplexity=ppl, n_tokens=g.n_tokens))
    return out


def rank_least_confident(scores: Sequence[ConfidenceScore], by: str = "confidence") -> list[int]:
    """Positions of ``scores`` from least to most confident (ties keep input order).

    ``by="confidence"``: ascending confidence; ``by="perplexity"``: descending perplexity.
    """
    if by == "confidence":
        key = [s.confidence for s in scores]
    elif by == "perplexity":
        key = [-s.perplexity for s in scores]
    else:
        raise ValueError(f"by must be 'confidence' or 'perplexity', got {by!r}")
    return sorted(range(len(scores)), key=lambda i: (key[i], i))


def select_low_confidence(
    scores: Sequence[ConfidenceScore], k: int = 32, fraction: float = 0.1, seed: int = 0, by: str = "confidence"
) -> list[str]:
    """Ids of ``k`` examples drawn (seeded, without replacement) from the least confident ``fraction``.

    The low-confidence segment is the ``ceil(fraction * n)`` least confident of the ``n`` scored
    examples (the paper's bottom decile for ``fraction=0.1``). The returned ids are ordered from
    least to most confident.

    Fallback: when the segment holds fewer than ``k`` examples (a pool smaller than about
    ``k / fraction``, i.e. 320 for the defaults) a :class:`SmallPoolWarning` is issued and the ``k``
    least confident examples of the whole pool are returned (no random draw).

    Raises:
        DataError: the pool has fewer than ``k`` examples (names both numbers).
        ValueError: ``k < 1``, ``fraction`` outside (0, 1] or an unknown ``by``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = len(scores)
    if n < k:
        raise DataError(
            f"the pool has {n} scored examples but k={k} are requested; add {k - n} more unlabeled examples or lower k"
        )
    order = rank_least_confident(scores, by=by)
    segment = int(math.ceil(fraction * n - 1e-9))
    if segment < k:
        warnings.warn(
            f"the least confident {fraction:.0%} of a pool of {n} is {segment} examples, fewer than k={k}: "
            f"taking the {k} least confident examples instead of a random draw from the bottom segment "
            f"(a pool of at least {math.ceil(k / fraction)} avoids this)",
            SmallPoolWarning,
            stacklevel=2,
        )
        chosen = order[:k]
    else:
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(segment, size=k, replace=False))
        chosen = [order[p] for p in picks]
    return [scores[i].id for i in chosen]
