"""Batched generation with per-token probabilities vs one-at-a-time generate + second-pass rescoring."""

from __future__ import annotations

import pytest
import torch

from benchmarks.baseline import naive_confidence
from dataeff.generation import end_token_ids, generate_answers, length_batches
from dataeff.models import load_model

PROMPTS = [
    "Is the following sentence plausible?",
    "Play some jazz music please.",
    "What is the weather like tomorrow in Paris? Play",
    "Wake me up at seven.",
    "The quick brown fox",
    "Classify the intent of the utterance.",
    "0 1 2 3",
    "positive negative neutral",
    "jumps over the lazy dog",
    "Intents: book_flight, play_music",
]


@pytest.fixture(scope="module")
def peaky(tiny_model_dir):
    """The tiny model with sharper logits and an eos bias, so answers end at different lengths."""
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="fp32")
    model, tok = loaded.model, loaded.tokenizer
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
        weight = model.lm_head.weight.detach().clone()
        head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
        head.weight.copy_(weight)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 2.0
        model.lm_head = head
        model.config.tie_word_embeddings = False
    return model, tok


def test_length_batches_cover_all_indices_once():
    batches = length_batches([3, 9, 1, 7, 7], 2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches[0] == [1, 3]  # longest first
    shortest_first = length_batches([3, 9, 1, 7, 7], 2, longest_first=False)
    assert shortest_first == [[2, 0], [3, 4], [1]]  # ties by index
    with pytest.raises(ValueError):
        length_batches([1], 0)


@pytest.mark.parametrize("chat_template", [False, True])
def test_batched_equals_one_at_a_time_rescoring(peaky, chat_template):
    model, tok = peaky
    gens = generate_answers(
        model, tok, PROMPTS, batch_size=3, max_new_tokens=12, chat_template=chat_template, progress=False
    )
    ref = naive_confidence(model, tok, PROMPTS, max_new_tokens=12, chat_template=chat_template)
    ends = end_token_ids(model, tok)
    for g, (ref_ids, ref_probs) in zip(gens, ref):
        assert g.token_ids == ref_ids
        assert g.n_tokens == len(g.token_ids) == len(g.token_probs)
        assert not set(g.token_ids) & ends
        assert torch.allclose(torch.tensor(g.token_probs), torch.tensor(ref_probs), atol=1e-4, rtol=0)
        assert all(0 < p <= 1 for p in g.token_probs)


def test_sequences_that_finish_early_do_not_count_padding(peaky):
    model, tok = peaky
    gens = generate_answers(model, tok, PROMPTS, batch_size=4, max_new_tokens=12, chat_template=False, progress=False)
    lengths = [g.n_tokens for g in gens]
    # the fixture is built so answers end at different steps inside one batch (incl. at once and never)
    assert 0 in lengths and 12 in lengths and len(set(lengths)) >= 3, lengths
    alone = [
        generate_answers(model, tok, [p], batch_size=1, max_new_tokens=12, chat_template=False, progress=False)[0]
        for p in PROMPTS
    ]
    assert [g.n_tokens for g in alone] == lengths
    for a, b in zip(gens, alone):
        assert a.text == b.text
        assert max((abs(x - y) for x, y in zip(a.token_probs, b.token_probs)), default=0) < 1e-4


def test_order_is_restored_and_empty_input(tiny_loaded):
    prompts = ["a b c d e f g h", "Play", "The quick brown fox jumps"]
    both = generate_answers(
        tiny_loaded.model, tiny_loaded.tokenizer, prompts, batch_size=2, max_new_tokens=4, progress=False
    )
    single = [
        generate_answers(tiny_loaded.model, tiny_loaded.tokenizer, [p], max_new_tokens=4, progress=False)[0]
        for p in prompts
    ]
    assert [g.token_ids for g in both] == [g.token_ids for g in single]
    assert generate_answers(tiny_loaded.model, tiny_loaded.tokenizer, [], progress=False) == []


def test_stop_strings_end_the_answer(peaky):
    model, tok = peaky
    full = generate_answers(model, tok, PROMPTS, max_new_tokens=12, chat_template=False, progress=False)
    target = next(g for g in full if len(g.text) >= 4)
    stop = target.text[1:3]
    cut = generate_answers(
        model, tok, PROMPTS, max_new_tokens=12, chat_template=False, progress=False, stop_strings=[stop]
    )
    got = cut[full.index(target)]
    # generation stops once the stop string appears (it may span the prompt's end); never later
    assert 0 < got.n_tokens < target.n_tokens
    assert got.token_ids == target.token_ids[: got.n_tokens]
