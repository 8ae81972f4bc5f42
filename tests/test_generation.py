"""Batched generation with per-token probabilities vs one-at-a-time generate + second-pass rescoring."""

from __future__ import annotations

import pytest
import torch

from benchmarks.baseline import naive_confidence
from dataeff.generation import end_token_ids, generate_answers, length_batches, logits_processing
from dataeff.models import encode_prompt, load_model

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


def _decode_rows(model):
    """Count the rows of every single-token (decoding) forward pass of ``model``'s decoder."""
    counts = {"decode_rows": 0, "decode_steps": 0}

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] == 1:
            counts["decode_rows"] += ids.shape[0]
            counts["decode_steps"] += 1

    return counts, model.model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("chat_template", [False, True])
def test_evicting_decoder_equals_generate_and_batch_one(peaky, chat_template):
    """The loop that drops finished rows and refills the batch gives generate's answers and probabilities."""
    model, tok = peaky
    prompts = PROMPTS + ["Play", "Classify the intent of the utterance. Intents: book_flight, play_music, get_weather"]
    kw = dict(max_new_tokens=12, chat_template=chat_template, progress=False)
    reference = generate_answers(model, tok, prompts, batch_size=4, evict=False, **kw)
    assert reference.decoder == "generate"
    alone = [generate_answers(model, tok, [p], batch_size=1, evict=False, **kw)[0] for p in prompts]
    lengths = [g.n_tokens for g in reference]
    if not chat_template:  # (the templated prompts all end at once on this model)
        assert 0 in lengths and 12 in lengths and len(set(lengths)) >= 3, lengths
    for batch_size in (1, 3, 4, 16):
        got = generate_answers(model, tok, prompts, batch_size=batch_size, **kw)
        assert got.decoder == "evict" and got.batch_size == batch_size
        for g, ref, one in zip(got, reference, alone):
            assert g.token_ids == ref.token_ids == one.token_ids and g.text == ref.text
            assert max((abs(a - b) for a, b in zip(g.token_probs, ref.token_probs)), default=0) < 1e-4
            assert max((abs(a - b) for a, b in zip(g.token_probs, one.token_probs)), default=0) < 1e-4


def test_finished_rows_never_decode_again(peaky):
    """Every decoding forward runs only rows whose answers go on (generate runs them all to the longest)."""
    model, tok = peaky
    kw = dict(max_new_tokens=12, chat_template=False, progress=False)
    ends = end_token_ids(model, tok)
    counts, handle = _decode_rows(model)
    try:
        gens = generate_answers(model, tok, PROMPTS, batch_size=4, **kw)
        evicting = dict(counts)
        counts.update(decode_rows=0, decode_steps=0)
        generate_answers(model, tok, PROMPTS, batch_size=4, evict=False, **kw)
        plain = dict(counts)
    finally:
        handle.remove()
    # a prompt chooses n_tokens tokens, plus its end token when it ended before the cap; the first
    # choice comes from the prefill, each later one from one decoding row
    chosen = [g.n_tokens + (g.n_tokens < 12) for g in gens]
    assert not any(set(g.token_ids) & ends for g in gens)
    assert evicting["decode_rows"] == sum(c - 1 for c in chosen)
    assert evicting["decode_rows"] < plain["decode_rows"]


def test_stop_strings_and_fixed_batches_agree_with_generate(peaky, monkeypatch):
    model, tok = peaky
    kw = dict(max_new_tokens=12, chat_template=False, progress=False)
    full = generate_answers(model, tok, PROMPTS, batch_size=3, **kw)
    stop = next(g for g in full if len(g.text) >= 4).text[1:3]
    ref = generate_answers(model, tok, PROMPTS, batch_size=3, evict=False, stop_strings=[stop], **kw)
    got = generate_answers(model, tok, PROMPTS, batch_size=3, stop_strings=[stop], **kw)
    assert [g.token_ids for g in got] == [g.token_ids for g in ref]
    # a cache the loop cannot drop rows from: fixed batches, finished rows ignored, same answers
    import dataeff.generation as generation

    monkeypatch.setattr(generation, "cache_can_drop_rows", lambda cache: False)
    fixed = generate_answers(model, tok, PROMPTS, batch_size=3, **kw)
    assert [g.token_ids for g in fixed] == [g.token_ids for g in full]
    for a, b in zip(fixed, full):
        assert max((abs(x - y) for x, y in zip(a.token_probs, b.token_probs)), default=0) < 1e-4


def test_logits_processing_falls_back_to_generate(tiny_loaded):
    model, tok = tiny_loaded.model, tiny_loaded.tokenizer
    assert logits_processing(model) == []
    gens = generate_answers(model, tok, ["Play", "Wake me up"], batch_size=None, max_new_tokens=3, progress=False)
    assert gens.batch_size == 16 and gens.decoder == "evict"  # CPU default
    saved = model.generation_config.repetition_penalty
    model.generation_config.repetition_penalty = 1.3
    try:
        assert logits_processing(model) == ["repetition_penalty"]
        gens = generate_answers(model, tok, ["Play", "Wake me up"], max_new_tokens=3, progress=False)
        assert gens.decoder == "generate"
    finally:
        model.generation_config.repetition_penalty = saved


@pytest.mark.parametrize("chat_template", [False, True])
def test_a_shared_prompt_prefix_is_run_once_with_the_same_answers(peaky, chat_template):
    """Prompts that start alike (a system prompt, a task instruction): the prefix's KV cache is made once."""
    model, tok = peaky
    prompts = ["Question: Classify the intent of the utterance. " + p for p in PROMPTS]
    kw = dict(max_new_tokens=12, chat_template=chat_template, progress=False)
    counts = {"prefill_tokens": 0}

    def hook(module, args, kwargs):  # real (unpadded) tokens of every prefill forward
        width = kwargs["input_ids"].shape[1]
        if width > 1:
            counts["prefill_tokens"] += int(kwargs["attention_mask"][:, -width:].sum())

    handle = model.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        got = generate_answers(model, tok, prompts, batch_size=4, **kw)
    finally:
        handle.remove()
    encoded = [encode_prompt(tok, p, chat_template) for p in prompts]
    shared = next(k for k in range(len(encoded[0])) if len({tuple(e[: k + 1]) for e in encoded}) > 1)
    assert shared >= 8
    assert counts["prefill_tokens"] == shared + sum(len(e) - shared for e in encoded)  # the prefix once
    reference = generate_answers(model, tok, prompts, batch_size=4, evict=False, **kw)
    alone = [generate_answers(model, tok, [p], batch_size=1, evict=False, **kw)[0] for p in prompts]
    for g, ref, one in zip(got, reference, alone):
        assert g.token_ids == ref.token_ids == one.token_ids
        assert max((abs(a - b) for a, b in zip(g.token_probs, one.token_probs)), default=0) < 1e-4
    if not chat_template:
        assert len({g.n_tokens for g in got}) >= 2
