"""LoRA fine-tune + evaluation on the tiny Llama: it learns, it is deterministic, the base model survives."""

from __future__ import annotations

import pytest
import torch

from dataeff.data import Example, TaskSpec
from dataeff.errors import DataError
from dataeff.finetune import (
    FinetuneSettings,
    encode_training_example,
    evaluate,
    finetune_lora,
    nested_subset,
    remove_adapters,
    run_finetune,
)

ROWS = [
    ("Play some jazz music please.", "music"),
    ("Play the music.", "music"),
    ("Play some jazz.", "music"),
    ("What is the weather like tomorrow?", "weather"),
    ("What is the weather in Paris?", "weather"),
    ("Is the weather like tomorrow?", "weather"),
    ("Wake me up at seven.", "alarm"),
    ("Wake me up at five.", "alarm"),
    ("Set an alarm at seven.", "alarm"),
]
TASK = TaskSpec("tiny_intents", labels=("music", "weather", "alarm"))
# Settings under which the tiny random model (hidden 32: its logits are small) can memorise 9 examples.
OVERFIT = FinetuneSettings(lr=1e-2, epochs=20, batch_size=3, chat_template=False, max_new_tokens=3, seed=0)


@pytest.fixture(scope="module")
def examples():
    return [Example(prompt=f"Intent: {p}", answer=a, id=f"tiny:{i}") for i, (p, a) in enumerate(ROWS)]


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _lora_modules(model):
    return [n for n, _ in model.named_modules() if "lora_" in n]


def test_overfits_tiny_set_and_leaves_base_untouched(tiny_loaded, examples):
    before = _snapshot(tiny_loaded.model)
    flags = {n: p.requires_grad for n, p in tiny_loaded.model.named_parameters()}
    zero = run_finetune(tiny_loaded, examples, examples, TASK, 0, OVERFIT, progress=False)
    assert zero.zero_shot and zero.n_train == 0 and zero.steps == 0 and zero.score < 0.2
    trained = run_finetune(tiny_loaded, examples, examples, TASK, len(examples), OVERFIT, progress=False)
    assert not trained.zero_shot and trained.n_train == 9 and trained.n_eval == 9
    assert trained.steps == 20 * 3 and trained.seconds_train > 0 and trained.seconds_eval > 0
    assert trained.score > 0.8, trained.predictions
    assert trained.settings["lr"] == 1e-2 and trained.settings["target_modules"].startswith("q_proj")
    # the shared base model is exactly as before: same weights, no adapters, same grad flags
    after = tiny_loaded.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert _lora_modules(tiny_loaded.model) == [] and type(tiny_loaded.model).__name__ == "LlamaForCausalLM"
    assert {n: p.requires_grad for n, p in tiny_loaded.model.named_parameters()} == flags
    assert not tiny_loaded.model.training
    # and zero-shot again gives the zero-shot predictions
    assert (
        run_finetune(tiny_loaded, examples, examples, TASK, 0, OVERFIT, progress=False).predictions == zero.predictions
    )


def test_training_is_deterministic_with_a_seed(tiny_loaded, examples):
    settings = FinetuneSettings(lr=1e-2, max_steps=3, batch_size=4, seed=7)

    def lora_weights():
        trained = finetune_lora(tiny_loaded, examples, settings, progress=False)
        weights = {k: v.detach().clone() for k, v in trained.model.state_dict().items() if "lora_" in k}
        assert trained.steps == 3 and trained.final_loss > 0
        assert remove_adapters(trained.model) is tiny_loaded.model
        return weights

    first, second = lora_weights(), lora_weights()
    assert first and first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert any(k.endswith("lora_B.default.weight") and first[k].abs().sum() > 0 for k in first)  # B moved from zero
    assert _lora_modules(tiny_loaded.model) == []


def test_adapter_saved_and_evaluate_accepts_loaded_model(tiny_loaded, examples, tmp_path):
    settings = FinetuneSettings(max_steps=1, batch_size=9, chat_template=True, max_new_tokens=2)
    result = run_finetune(
        tiny_loaded, examples, examples[:3], TASK, 4, settings, adapter_dir=tmp_path / "adapter", progress=False
    )
    assert result.adapter_dir == str(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert "predictions" not in result.as_dict() and result.as_dict()["budget"] == 4
    ev = evaluate(tiny_loaded, None, examples[:3], TASK, settings, progress=False)
    assert ev.n == 3 and len(ev.predictions) == 3 and 0.0 <= ev.score <= 1.0 and ev.metric == "exact_match"


def test_answer_tokens_only_in_the_loss(tiny_loaded, examples):
    tok = tiny_loaded.tokenizer
    ids, labels = encode_training_example(tok, examples[0], chat_template=True, max_length=256)
    answer = [t for t in labels if t != -100]
    assert len(ids) == len(labels) and answer[-1] == tok.eos_token_id
    assert tok.decode(answer[:-1]).strip() == "music"
    assert labels[: len(ids) - len(answer)] == [-100] * (len(ids) - len(answer))
    ids_plain, labels_plain = encode_training_example(tok, examples[0], chat_template=False, max_length=256)
    assert tok.decode([t for t in labels_plain if t != -100][:-1]) == " music"  # one space after the prompt
    short_ids, short_labels = encode_training_example(tok, examples[0], chat_template=True, max_length=6)
    assert len(short_ids) == 6 and [t for t in short_labels if t != -100] == answer  # prompt cut from the left
    with pytest.raises(DataError, match="'x' has no answer"):
        encode_training_example(tok, Example(prompt="p", answer=None, id="x"), True, 32)


def test_nested_subsets(examples):
    pool = [Example(prompt=f"p{i}", answer="a", id=f"t:{i}") for i in range(100)]
    s10, s50, s100 = (nested_subset(pool, b, seed=3) for b in (10, 50, 100))
    assert s50[:10] == s10 and s100[:50] == s50 and sorted(e.id for e in s100) == sorted(e.id for e in pool)
    assert nested_subset(pool, 50, seed=3) == s50
    assert nested_subset(pool, 50, seed=4) != s50
    assert nested_subset(list(reversed(pool)), 50, seed=3) == s50  # arrival order does not matter
    assert nested_subset(pool, 0) == []
    no_ids = [Example(prompt=f"p{i}", answer="a") for i in range(20)]
    assert nested_subset(no_ids, 5, seed=1) == nested_subset(no_ids, 10, seed=1)[:5]


def test_budget_errors(tiny_loaded, examples):
    with pytest.raises(DataError, match="budget 50 exceeds the 9 labeled examples available; label 41 more"):
        nested_subset(examples, 50)
    with pytest.raises(DataError, match="budget must be >= 0"):
        nested_subset(examples, -1)
    with pytest.raises(DataError, match="integer"):
        nested_subset(examples, 2.5)
    with pytest.raises(DataError, match="budget 10 exceeds the 9"):
        run_finetune(tiny_loaded, examples, examples, TASK, 10, progress=False)
    unlabeled = [Example(prompt="p", answer=None, id=str(i)) for i in range(3)]
    with pytest.raises(DataError, match="0 labeled rows, at least 2 needed"):
        run_finetune(tiny_loaded, unlabeled, examples, TASK, 2, progress=False)
    with pytest.raises(DataError, match="evaluation set is empty"):
        run_finetune(tiny_loaded, examples, [], TASK, 0, progress=False)
    with pytest.raises(DataError, match=r"invalid lr=0"):
        FinetuneSettings(lr=0)
    assert _lora_modules(tiny_loaded.model) == []


def test_settings_hold_their_lora_and_keep_the_flat_tracking_schema():
    from dataeff.finetune import FINETUNE_LORA
    from dataeff.models import ALL_LINEAR_TARGETS, LoraSettings

    s = FinetuneSettings()
    assert s.lora == FINETUNE_LORA and (s.lora.r, s.lora.alpha) == (8, 16)
    flat = s.as_dict()  # MLflow params and run keys: the same flat names as before the LoRA part was nested
    assert flat["r"] == 8 and flat["alpha"] == 16 and flat["dropout"] == 0.05 and "lora" not in flat
    assert flat["target_modules"] == ",".join(ALL_LINEAR_TARGETS)
    assert FinetuneSettings.from_dict(flat) == s
    custom = FinetuneSettings.from_dict({"r": 4, "target_modules": ["q_proj", "v_proj"], "lr": 1e-3})
    assert custom.lora == LoraSettings(r=4, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj"))
    with pytest.raises(DataError, match=r"unknown keys \['rank'\]"):
        FinetuneSettings.from_dict({"rank": 4})
    with pytest.raises(DataError, match="lora.r=0"):
        FinetuneSettings(lora=LoraSettings(r=0))
