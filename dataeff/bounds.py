"""Token bounds on prompts and answers: items too long for the model are reported, never run.

One prompt of 100,000 characters makes a batched forward pass ask for tens of GB (attention grows
with the square of the length) and takes the whole batch down with it. The check here tokenizes
each item once (cheap) and splits the items into those within the bounds and those beyond, each
rejected item named by id with what to do about it. The defaults live here, once:
:class:`dataeff.project.ProjectConfig` and :func:`dataeff.coslow.compute_coslow` use them.

What is counted:

- a prompt's tokens as the model sees them: :func:`dataeff.models.encode_prompt`, i.e. with the
  chat template's wrapping and generation prompt when ``chat_template`` is on;
- an answer's tokens as plain text (no special tokens), when the item has an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dataeff.data import Example
from dataeff.errors import DataError

DEFAULT_MAX_PROMPT_TOKENS = 1024
"""Default longest prompt (tokens as the model sees it). Well above a task prompt (BIG-bench
prompts: tens to a few hundred tokens), low enough that a batch of 16 stays a few GB on SmolLM2."""

DEFAULT_MAX_ANSWER_TOKENS = 256
"""Default longest gold answer (tokens). A label or a short free-text answer; it equals the
fine-tune's default ``max_length``, beyond which a training answer would be cut anyway."""

CHARS_PER_TOKEN_HINT = 4
"""Rough characters per token of English text, for the early warning of :func:`likely_too_long`."""


@dataclass(frozen=True)
class RejectedItem:
    """An item left out because it is beyond a token bound.

    Attributes:
        id: the item's id (``Example.id``; its position in the input when that is None).
        field: ``"prompt"`` or ``"answer"``.
        tokens: its length in tokens.
        limit: the bound it exceeds.
        reason: one sentence naming the length, the limit, the config field and the fix.
    """

    id: str
    field: str
    tokens: int
    limit: int
    reason: str

    def as_dict(self) -> dict:
        return {"id": self.id, "field": self.field, "tokens": self.tokens, "limit": self.limit, "reason": self.reason}


def _check_limit(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name} must be a whole number of tokens >= 1, got {value!r}")
    return value


def _reason(what: str, tokens: int, limit: int, setting: str) -> str:
    return (
        f"{what} is {tokens:,} tokens; the limit is {limit:,} ({setting} in the project config): "
        f"shorten it or raise the limit"
    )


def split_by_token_bounds(
    tokenizer,
    examples: Sequence[Example],
    *,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
    chat_template: bool = True,
) -> tuple[list[Example], list[RejectedItem]]:
    """Split ``examples`` into those within the token bounds and those beyond (one tokenization each).

    Args:
        tokenizer: the model's tokenizer.
        examples: items; ``answer`` is checked only where it is not None.
        max_prompt_tokens: longest prompt, counted as :func:`dataeff.models.encode_prompt` encodes it.
        max_answer_tokens: longest answer, counted without special tokens.
        chat_template: whether prompts are wrapped in the chat template (as the model will see them).

    Returns:
        ``(kept, rejected)``: ``kept`` in input order; one :class:`RejectedItem` per left-out item,
        in input order (the prompt is reported when both are too long).

    Raises:
        DataError: a bound that is not a whole number >= 1.
    """
    from dataeff.models import encode_prompt

    _check_limit("max_prompt_tokens", max_prompt_tokens)
    _check_limit("max_answer_tokens", max_answer_tokens)
    kept: list[Example] = []
    rejected: list[RejectedItem] = []
    for i, ex in enumerate(examples):
        ex_id = str(ex.id) if ex.id is not None else str(i)
        n_prompt = len(encode_prompt(tokenizer, ex.prompt, chat_template))
        if n_prompt > max_prompt_tokens:
            rejected.append(
                RejectedItem(
                    ex_id,
                    "prompt",
                    n_prompt,
                    max_prompt_tokens,
                    _reason("prompt", n_prompt, max_prompt_tokens, "max_prompt_tokens"),
                )
            )
            continue
        if ex.answer is not None:
            n_answer = len(tokenizer(ex.answer, add_special_tokens=False)["input_ids"])
            if n_answer > max_answer_tokens:
                rejected.append(
                    RejectedItem(
                        ex_id,
                        "answer",
                        n_answer,
                        max_answer_tokens,
                        _reason("answer", n_answer, max_answer_tokens, "max_answer_tokens"),
                    )
                )
                continue
        kept.append(ex)
    return kept, rejected


def likely_too_long(
    examples: Sequence[Example], max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, factor: int = 2
) -> list[tuple[str, int]]:
    """Items whose prompt is obviously beyond ``max_prompt_tokens``, judged by characters alone.

    No tokenizer needed (for an early warning at import). "Obviously": more than ``factor`` times
    the characters ``max_prompt_tokens`` tokens of English usually span
    (:data:`CHARS_PER_TOKEN_HINT` per token). The real check is :func:`split_by_token_bounds`.

    Returns:
        ``(id, characters)`` of each such item, in input order.
    """
    _check_limit("max_prompt_tokens", max_prompt_tokens)
    threshold = factor * CHARS_PER_TOKEN_HINT * max_prompt_tokens
    return [
        (str(ex.id) if ex.id is not None else str(i), len(ex.prompt))
        for i, ex in enumerate(examples)
        if len(ex.prompt) > threshold
    ]
