"""Batch sizes chosen for the device: the pure choice functions (no GPU needed)."""

from __future__ import annotations

import torch

from dataeff.device_memory import (
    CPU_CONFIDENCE_BATCH,
    CPU_COSLOW_BATCH,
    MAX_CONFIDENCE_BATCH,
    ModelShape,
    choose_confidence_batch_size,
    choose_coslow_batch_size,
    confidence_batch_size,
    confidence_bytes_per_prompt,
    coslow_batch_size,
    coslow_bytes_per_example,
    free_device_memory,
)

GB = 2**30
LLAMA_8B = ModelShape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128256)
SMOLLM2 = ModelShape(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, head_dim=64, vocab=49152)


def test_cpu_keeps_the_fixed_defaults(tiny_loaded):
    assert free_device_memory(torch.device("cpu")) is None
    assert choose_confidence_batch_size(LLAMA_8B, None, 60, 30, n_prompts=500) == CPU_CONFIDENCE_BATCH == 16
    assert choose_coslow_batch_size(LLAMA_8B, None, 60, n_examples=32, lora_rank=64, n_modules=224) == 8
    assert CPU_COSLOW_BATCH == 8
    assert confidence_batch_size(tiny_loaded.model, [5, 9], 30) == 16
    assert coslow_batch_size(tiny_loaded.model, [5, 9, 7], 8, 14) == 8


def test_shape_from_a_transformers_config(tiny_loaded):
    shape = ModelShape.of(tiny_loaded.model)
    assert (shape.hidden, shape.intermediate, shape.layers, shape.kv_heads, shape.head_dim) == (32, 64, 2, 2, 8)


def test_confidence_batch_grows_with_free_memory_and_shrinks_with_length():
    kw = dict(n_prompts=10_000, dtype_bytes=2)
    small = choose_confidence_batch_size(LLAMA_8B, 4 * GB, 60, 30, **kw)
    big = choose_confidence_batch_size(LLAMA_8B, 60 * GB, 60, 30, **kw)
    long = choose_confidence_batch_size(LLAMA_8B, 60 * GB, 2000, 30, **kw)
    assert 1 <= small < big <= MAX_CONFIDENCE_BATCH and long < big
    assert big == MAX_CONFIDENCE_BATCH  # an 8B model with ~60 GB free: the cap (KV cache ~11 MB per prompt)
    assert all(b % 8 == 0 for b in (small, long) if b >= 8)
    # the estimate behind it: 8B, 90 tokens of bf16 KV cache = 2 * 32 * 8 * 128 * 90 * 2 bytes
    assert confidence_bytes_per_prompt(LLAMA_8B, 60, 30, 2) > 2 * 32 * 8 * 128 * 90 * 2
    assert choose_confidence_batch_size(LLAMA_8B, 60 * GB, 60, 30, n_prompts=5) == 5  # never more than the prompts
    assert choose_confidence_batch_size(LLAMA_8B, 1, 60, 30, n_prompts=5) == 1  # never 0


def test_coslow_batch_takes_every_example_when_they_fit():
    kw = dict(lora_rank=64, n_modules=7 * 32, dtype_bytes=2)
    per = coslow_bytes_per_example(LLAMA_8B, 60, 2, 64, 7 * 32)
    assert 200 * 2**20 < per < 600 * 2**20  # ~0.4 GB of activations per 60-token example at 8B, bf16
    # 32 examples of ~60 tokens on an H100 with the 8B weights loaded (~60 GB free): one batch, no rows kept
    assert choose_coslow_batch_size(LLAMA_8B, 60 * GB, 60, n_examples=32, **kw) == 32
    # 1,024 examples do not fit: the largest multiple of 8 within half the free memory, capped
    many = choose_coslow_batch_size(LLAMA_8B, 60 * GB, 60, n_examples=1024, **kw)
    assert 8 <= many <= 64 and many % 8 == 0
    assert choose_coslow_batch_size(LLAMA_8B, 60 * GB, 600, n_examples=1024, **kw) < many
    small = dict(lora_rank=64, n_modules=210, dtype_bytes=4)  # SmolLM2, fp32: ~0.1 GB per example
    assert choose_coslow_batch_size(SMOLLM2, 70 * GB, 60, n_examples=256, **small) == 256
