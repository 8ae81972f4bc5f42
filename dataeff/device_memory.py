"""Batch sizes and memory budgets chosen for the device (CUDA: from free memory and sequence lengths).

CPU keeps the fixed defaults the project was tuned with (:data:`CPU_CONFIDENCE_BATCH`,
:data:`CPU_COSLOW_BATCH`). On CUDA the batch is the largest that fits a share of the free device
memory, estimated from the model's shape (:class:`ModelShape`) and the longest sequence:

- confidence (greedy decoding, no gradients): per prompt the KV cache of prompt + answer, one
  layer's prefill activations and the fp32 logits of one position;
- CoS-Low (one forward + backward, all parameters frozen): per example the activations autograd
  keeps for the backward pass in every layer, plus the LoRA inputs ``u = A x`` (fp32). When all
  examples fit in one batch CoS-Low keeps no per-example gradient rows at all
  (:mod:`dataeff.gradients`), so that is chosen whenever it fits.

The estimates are deliberately generous (a safety factor on top); every choice is an int the
caller can override and the value used is returned with the result. The pure functions
(``choose_*``) take the free memory as an argument and are unit-tested without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

CPU_CONFIDENCE_BATCH = 16
CPU_COSLOW_BATCH = 8
MAX_CONFIDENCE_BATCH = 128
MAX_COSLOW_BATCH = 64
SAFETY = 1.5  # estimates are multiplied by this before they are compared with free memory


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that decide its activation memory."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """Read a transformers config (the text config of a multimodal one)."""
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 1024)
        heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 16)
        return cls(
            hidden=hidden,
            intermediate=int(getattr(config, "intermediate_size", 0) or getattr(config, "n_inner", 0) or 4 * hidden),
            layers=int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 24),
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", 0) or heads),
            head_dim=int(getattr(config, "head_dim", 0) or hidden // heads),
            vocab=int(getattr(config, "vocab_size", 0) or 32000),
        )

    @classmethod
    def of(cls, model) -> ModelShape:
        return cls.from_config(model.config)


def free_device_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can still get on ``device``: CUDA free memory plus what torch's caching
    allocator holds unused; ``None`` on CPU (no device budget)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(cached_unused, 0))


def available_host_memory() -> int:
    """``MemAvailable`` of the host in bytes (0 when unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def _round_batch(batch: int, cap: int, n: int) -> int:
    batch = max(1, min(batch, cap, max(n, 1)))
    if batch >= 8 and batch < n:
        batch -= batch % 8  # multiples of 8 suit tensor cores; never rounds the whole set down
    return batch


def confidence_bytes_per_prompt(shape: ModelShape, prompt_len: int, max_new_tokens: int, dtype_bytes: int) -> int:
    """Estimated peak device bytes one prompt adds to a greedy-decoding batch."""
    total = prompt_len + max_new_tokens
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * total * dtype_bytes
    prefill = prompt_len * (6 * shape.hidden + 3 * shape.intermediate) * dtype_bytes
    scores = shape.heads * prompt_len * prompt_len * 4  # attention scores if SDPA falls back to its math kernel
    logits = 3 * shape.vocab * 4  # one position: logits, fp32 copy, softmax
    return int(kv + prefill + scores + logits)


def choose_confidence_batch_size(
    shape: ModelShape,
    free_bytes: int | None,
    prompt_len: int,
    max_new_tokens: int,
    *,
    n_prompts: int,
    dtype_bytes: int = 2,
    fraction: float = 0.6,
    cap: int = MAX_CONFIDENCE_BATCH,
) -> int:
    """Prompts per decoding batch: :data:`CPU_CONFIDENCE_BATCH` without a device budget (``free_bytes``
    None), else the most that fit ``fraction`` of ``free_bytes`` (at most ``cap`` and ``n_prompts``)."""
    if free_bytes is None:
        return CPU_CONFIDENCE_BATCH
    per = confidence_bytes_per_prompt(shape, prompt_len, max_new_tokens, dtype_bytes) * SAFETY
    return _round_batch(int(fraction * free_bytes / per), cap, n_prompts)


def coslow_bytes_per_example(shape: ModelShape, seq_len: int, dtype_bytes: int, lora_rank: int, n_modules: int) -> int:
    """Estimated device bytes one example adds to a CoS-Low forward + backward batch.

    Per token and layer autograd keeps about ``10 hidden + 4 intermediate + 3 kv`` activations in the
    model's dtype and two fp32 RMSNorm inputs; the LoRA hooks keep ``u = A x`` (fp32, ``r`` numbers per
    adapted module).
    """
    kv = shape.kv_heads * shape.head_dim
    per_token_layer = (10 * shape.hidden + 4 * shape.intermediate + 3 * kv) * dtype_bytes + 8 * shape.hidden
    per_token_layer += 4 * lora_rank * max(1, n_modules // max(shape.layers, 1))
    return int(seq_len * shape.layers * per_token_layer)


def choose_coslow_batch_size(
    shape: ModelShape,
    free_bytes: int | None,
    seq_len: int,
    *,
    n_examples: int,
    lora_rank: int,
    n_modules: int,
    dtype_bytes: int = 2,
    fraction: float = 0.5,
    cap: int = MAX_COSLOW_BATCH,
) -> int:
    """Examples per CoS-Low forward/backward batch.

    :data:`CPU_COSLOW_BATCH` without a device budget. On a device: all ``n_examples`` in one batch when
    their activations fit 80% of ``free_bytes`` (then no per-example gradient rows are kept at all),
    else the most that fit ``fraction`` of it (the rest is left for the rows), at most ``cap``.
    """
    if free_bytes is None:
        return CPU_COSLOW_BATCH
    per = coslow_bytes_per_example(shape, seq_len, dtype_bytes, lora_rank, n_modules) * SAFETY
    if n_examples * per <= 0.8 * free_bytes:
        return max(1, n_examples)
    return _round_batch(int(fraction * free_bytes / per), cap, n_examples)


def _dtype_bytes(model) -> int:
    try:
        return next(model.parameters()).element_size()
    except StopIteration:
        return 4


def confidence_batch_size(model, prompt_lengths: list[int], max_new_tokens: int) -> int:
    """:func:`choose_confidence_batch_size` for ``model`` on its device (16 on CPU)."""
    from dataeff.models import model_device

    free = free_device_memory(model_device(model))
    if free is None:
        return CPU_CONFIDENCE_BATCH
    return choose_confidence_batch_size(
        ModelShape.of(model),
        free,
        max(prompt_lengths, default=1),
        max_new_tokens,
        n_prompts=len(prompt_lengths),
        dtype_bytes=_dtype_bytes(model),
    )


def coslow_batch_size(model, seq_lengths: list[int], lora_rank: int, n_modules: int) -> int:
    """:func:`choose_coslow_batch_size` for ``model`` on its device (8 on CPU)."""
    from dataeff.models import model_device

    free = free_device_memory(model_device(model))
    if free is None:
        return CPU_COSLOW_BATCH
    return choose_coslow_batch_size(
        ModelShape.of(model),
        free,
        max(seq_lengths, default=1),
        n_examples=len(seq_lengths),
        lora_rank=lora_rank,
        n_modules=n_modules,
        dtype_bytes=_dtype_bytes(model),
    )
