"""Batched greedy generation that also returns the probability of every chosen token.

One ``model.generate`` call per batch gives both the answer and its per-token probabilities
(``output_logits=True``: the raw, unprocessed logits of each step, soft-maxed in fp32), so no second
forward pass over prompt + answer is needed. Prompts are encoded with
:func:`dataeff.models.encode_prompt`, sorted by length into batches (less padding), LEFT padded, and
the results are put back in input order.

What counts as the answer: the generated tokens before the first end token (the tokenizer's and the
model's eos ids, ``<|im_end|>``, ``<|endoftext|>`` and the pad token). The end token itself and
everything after it (padding of a sequence that finished earlier than others in its batch) is not
part of the answer. With ``stop_strings`` a sequence also ends after the token that completes one of
the strings (that token is kept, as ``generate`` keeps it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from tqdm.auto import tqdm

from dataeff.models import encode_prompt, model_device

END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>")


@dataclass
class Generation:
    """One greedy answer.

    Attributes:
        text: the decoded answer, special tokens skipped, surrounding whitespace stripped.
        token_ids: ids of the answer tokens (end-of-turn, eos and padding excluded).
        token_probs: probability, under the model, of each chosen answer token (same length).
        n_tokens: ``len(token_ids)``.
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    token_probs: list[float] = field(default_factory=list)
    n_tokens: int = 0


def end_token_ids(model, tokenizer) -> set[int]:
    """Ids that end an answer: eos (tokenizer and model generation config), pad, and known end-of-turn tokens."""
    ids: set[int] = set()
    for value in (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_TOKENS if t in vocab)
    return ids


def length_batches(lengths: Sequence[int], batch_size: int, *, longest_first: bool = True) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size`` of similar lengths.

    The indices are sorted by length (longest first, or shortest first when ``longest_first`` is
    False; ties by index) and chunked in that order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sign = -1 if longest_first else 1
    order = sorted(range(len(lengths)), key=lambda i: (sign * lengths[i], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def _answer_length(ids: list[int], ends: set[int], tokenizer, stop_strings: Sequence[str] | None) -> int:
    """Number of answer tokens at the start of ``ids`` (up to the first end token / completed stop string)."""
    n = len(ids)
    for pos, tok in enumerate(ids):
        if tok in ends:
            n = pos
            break
    if stop_strings:
        for pos in range(1, n + 1):
            text = tokenizer.decode(ids[:pos], skip_special_tokens=True)
            if any(s in text for s in stop_strings):
                return pos
    return n


@torch.inference_mode()
def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 30,
    chat_template: bool = True,
    progress: bool = True,
    stop_strings: Sequence[str] | None = None,
) -> list[Generation]:
    """Greedy answers to ``prompts`` with the probability of each chosen token.

    Args:
        model: a causal LM (plain or peft-wrapped), already on its device; used in eval mode.
        tokenizer: its tokenizer (needs a pad or eos token).
        prompts: raw prompt strings (the chat template is applied here when ``chat_template``).
        batch_size: prompts per ``generate`` call (default 16).
        max_new_tokens: answer length cap in tokens (default 30).
        chat_template: wrap each prompt as one user turn plus the generation prompt (default True).
        progress: show a tqdm bar counting prompts (items/s and ETA).
        stop_strings: optional strings that also end an answer (e.g. ``["\\n"]``).

    Returns:
        One :class:`Generation` per prompt, in the order of ``prompts``.
    """
    prompts = list(prompts)
    if not prompts:
        return []
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    from transformers import GenerationConfig

    was_training = model.training
    model.eval()
    device = model_device(model)
    ends = end_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=sorted(ends),
        pad_token_id=pad_id,
        output_logits=True,
        return_dict_in_generate=True,
        stop_strings=list(stop_strings) if stop_strings else None,
    )
    encoded = [encode_prompt(tokenizer, p, chat_template) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} encodes to no tokens; drop empty prompts")
    results: list[Generation | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc="generate", unit="ex", disable=not progress)
    try:
        for batch in length_batches([len(e) for e in encoded], batch_size):
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                generation_config=config,
                tokenizer=tokenizer if stop_strings else None,
            )
            new_tokens = out.sequences[:, width:].cpu()
            # (steps, batch, vocab) -> probability of the token actually chosen at each step, fp32 softmax.
            steps = new_tokens.to(device)
            chosen = torch.stack(
                [
                    torch.softmax(step.float(), dim=-1).gather(-1, steps[:, t : t + 1]).squeeze(-1)
                    for t, step in enumerate(out.logits)
                ],
                dim=1,
            ).cpu()
            for row, i in enumerate(batch):
                ids = new_tokens[row].tolist()
                n = _answer_length(ids, ends, tokenizer, stop_strings)
                results[i] = Generation(
                    text=tokenizer.decode(ids[:n], skip_special_tokens=True).strip(),
                    token_ids=ids[:n],
                    token_probs=chosen[row, :n].tolist(),
                    n_tokens=n,
                )
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return cast(list[Generation], results)  # every slot is filled: the batches cover all prompts
