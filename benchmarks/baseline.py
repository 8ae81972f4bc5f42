"""Naive reference algorithms, written the way the paper's reference code works (the oracle of tests and
the baseline of benchmarks). Deliberately slow: do not use them in the product.

- :func:`naive_coslow`: one forward/backward per example through the full model (LM head at every
  position, loss = HF's mean cross-entropy over the answer tokens), every LoRA gradient (A and B)
  kept in a dict per example, cosines in a Python double loop over pairs and, inside it, over the
  LoRA matrices (equivalent to the cosine of all matrix-shaped LoRA gradients concatenated).
- :func:`naive_confidence`: one example at a time: greedy ``generate``, then a second forward pass
  over prompt + generated answer, probabilities read at the answer positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from dataeff.data import Example
from dataeff.errors import DataError
from dataeff.generation import end_token_ids, model_device
from dataeff.models import LoraSettings, attach_lora, encode_prompt, encode_prompt_answer


def naive_lora_gradients(peft_model, tokenizer, examples: Sequence[Example], chat_template: bool) -> list[dict]:
    """One dict ``{parameter name: gradient}`` per example (every trainable matrix-shaped LoRA parameter)."""
    device = model_device(peft_model)
    params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" in n and p.dim() == 2}
    grads = []
    for ex in examples:
        if ex.answer is None:
            raise DataError(f"example {ex.id}: no gold answer; gradients need labeled examples")
        ids, n_prompt = encode_prompt_answer(tokenizer, ex.prompt, ex.answer, chat_template)
        input_ids = torch.tensor([ids], device=device)
        labels = input_ids.clone()
        labels[:, :n_prompt] = -100
        peft_model.zero_grad(set_to_none=True)
        loss = peft_model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        grads.append({n: p.grad.detach().clone() for n, p in params.items()})
    peft_model.zero_grad(set_to_none=True)
    return grads


def naive_pairwise_cosines(grads: list[dict]) -> np.ndarray:
    """Cosine of every pair ``i < j``, looping over pairs and, per pair, over LoRA matrices."""
    names = list(grads[0])
    cosines = []
    for i in range(len(grads)):
        for j in range(i + 1, len(grads)):
            dot = norm_i = norm_j = 0.0
            for name in names:
                a, b = grads[i][name].double(), grads[j][name].double()
                dot += float((a * b).sum())
                norm_i += float((a * a).sum())
                norm_j += float((b * b).sum())
            cosines.append(dot / math.sqrt(norm_i * norm_j))
    return np.asarray(cosines)


def naive_coslow(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    lora: LoraSettings = LoraSettings(),
    seed: int = 0,
    chat_template: bool = False,
) -> float:
    """CoS-Low the reference way: median of the pairwise cosines of per-example LoRA gradients.

    ``model`` is left without adapters afterwards (peft ``unload``).
    """
    peft_model = attach_lora(model, lora, seed)
    try:
        peft_model.eval()
        grads = naive_lora_gradients(peft_model, tokenizer, examples, chat_template)
        return float(np.median(naive_pairwise_cosines(grads)))
    finally:
        base = peft_model.unload()
        if hasattr(base, "peft_config"):
            del base.peft_config


@torch.inference_mode()
def naive_confidence(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 30, chat_template: bool = True
) -> list[tuple[list[int], list[float]]]:
    """Per prompt: greedy answer tokens (end tokens excluded) and each one's probability from a second forward pass."""
    from transformers import GenerationConfig

    device = model_device(model)
    ends = end_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=sorted(ends), pad_token_id=pad_id
    )
    out: list[tuple[list[int], list[float]]] = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt, chat_template)
        input_ids = torch.tensor([ids], device=device)
        seq = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
        answer = seq[0, len(ids) :].tolist()
        n = next((k for k, t in enumerate(answer) if t in ends), len(answer))
        answer = answer[:n]
        if not answer:
            out.append(([], []))
            continue
        full = torch.tensor([ids + answer], device=device)
        logits = model(input_ids=full).logits[0, len(ids) - 1 : len(ids) - 1 + n].float()
        probs = torch.softmax(logits, dim=-1).gather(-1, torch.tensor(answer, device=device).unsqueeze(-1)).squeeze(-1)
        out.append((answer, probs.cpu().tolist()))
    return out
