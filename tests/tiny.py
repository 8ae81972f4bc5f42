"""A tiny Llama-style causal LM with a small byte-level BPE tokenizer, built offline in seconds.

Used by unit tests: same architecture family as SmolLM2 (q/k/v/o/gate/up/down projections),
random weights, vocabulary of a few hundred tokens, a chat template.
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "Question: Is the following sentence plausible? Answer: yes no",
    "Classify the intent of the utterance. Intents: book_flight, play_music, get_weather, set_alarm.",
    "What is the weather like tomorrow in Paris? Play some jazz music please. Wake me up at seven.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 positive negative neutral",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>", unk_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(vocab_size: int, seed: int = 0, layers: int = 2, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny(folder: Path, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer folder loadable with ``dataeff.models.load_model(folder)``."""
    tok = build_tiny_tokenizer()
    model = build_tiny_model(len(tok), seed=seed)
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
