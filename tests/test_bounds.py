"""Token bounds: an over-long item is reported by id and never run; the rest of the batch is scored.

Unit tests of :func:`dataeff.bounds.split_by_token_bounds` on the tiny BPE tokenizer, CoS-Low
leaving out a labeled example with an over-long answer, and bootstrap end to end (real Label
Studio, real MLflow on SQLite, Prefect test harness, tiny model) with one 100,000-character prompt
in the pool.
"""

from __future__ import annotations

import ls_testing
import pytest
from fixtures_projects import LABELS, SENTENCES
from tiny import build_tiny_tokenizer

from dataeff.bounds import DEFAULT_MAX_ANSWER_TOKENS, DEFAULT_MAX_PROMPT_TOKENS, likely_too_long, split_by_token_bounds
from dataeff.data import Example, TaskSpec
from dataeff.errors import DataError
from dataeff.models import encode_prompt
from dataeff.project import ProjectConfig

HUGE = ("The quick brown fox jumps over the lazy dog. " * 2300)[:100_000]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_over_long_prompt_and_answer_are_rejected_by_id_with_the_fix(tok):
    examples = [
        Example(prompt="Play some jazz music please. Answer:", id="ok"),
        Example(prompt=HUGE, id="huge"),
        Example(prompt="Is it plausible? Answer:", answer="yes " * 400, id="long-answer"),
        Example(prompt="Wake me up at seven. Answer:", answer="no", id="ok2"),
    ]
    kept, rejected = split_by_token_bounds(tok, examples, max_prompt_tokens=1024, max_answer_tokens=256)
    assert [e.id for e in kept] == ["ok", "ok2"]
    assert [(r.id, r.field) for r in rejected] == [("huge", "prompt"), ("long-answer", "answer")]
    huge = rejected[0]
    assert huge.tokens == len(encode_prompt(tok, HUGE, True)) > 1024 and huge.limit == 1024
    assert huge.reason == (
        f"prompt is {huge.tokens:,} tokens; the limit is 1,024 (max_prompt_tokens in the "
        f"project config): shorten it or raise the limit"
    )
    assert rejected[1].limit == 256 and "max_answer_tokens" in rejected[1].reason
    assert huge.as_dict() == {
        "id": "huge",
        "field": "prompt",
        "tokens": huge.tokens,
        "limit": 1024,
        "reason": huge.reason,
    }


def test_prompt_is_counted_as_the_model_sees_it(tok):
    prompt = "Play some jazz music please."
    plain, templated = len(encode_prompt(tok, prompt, False)), len(encode_prompt(tok, prompt, True))
    assert templated > plain
    ex = [Example(prompt=prompt, id="x")]
    assert split_by_token_bounds(tok, ex, max_prompt_tokens=plain, chat_template=False)[1] == []
    _, rejected = split_by_token_bounds(tok, ex, max_prompt_tokens=plain, chat_template=True)
    assert rejected[0].tokens == templated
    # Exactly at the limit is within it; unlabeled items have no answer to check; ids default to positions.
    kept, rejected = split_by_token_bounds(tok, [Example(prompt=prompt)], max_prompt_tokens=templated)
    assert len(kept) == 1 and not rejected
    assert split_by_token_bounds(tok, [Example(prompt=prompt)], max_prompt_tokens=templated - 1)[1][0].id == "0"


def test_bounds_must_be_positive_whole_numbers(tok):
    for bad in (0, -5, 1.5, True):
        with pytest.raises(DataError, match="max_prompt_tokens must be a whole number"):
            split_by_token_bounds(tok, [], max_prompt_tokens=bad)
    with pytest.raises(DataError, match="max_answer_tokens"):
        split_by_token_bounds(tok, [], max_answer_tokens=0)


def test_project_config_carries_the_bounds_with_one_default():
    cfg = ProjectConfig(name="p", task=TaskSpec(name="t"))
    assert (cfg.max_prompt_tokens, cfg.max_answer_tokens) == (DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MAX_ANSWER_TOKENS)
    saved = cfg.as_dict()
    del saved["max_prompt_tokens"], saved["max_answer_tokens"]  # a config saved before the fields existed
    assert ProjectConfig.from_dict(saved).max_prompt_tokens == DEFAULT_MAX_PROMPT_TOKENS
    assert ProjectConfig.from_dict({**cfg.as_dict(), "max_prompt_tokens": 4096}).max_prompt_tokens == 4096


def test_likely_too_long_flags_only_obvious_cases():
    examples = [Example(prompt=HUGE, id="huge"), Example(prompt="x" * 5000, id="long-ish"), Example(prompt="short")]
    assert likely_too_long(examples, 1024) == [("huge", 100_000)]


def test_coslow_leaves_out_an_over_long_answer_and_reports_it(tiny_loaded):
    from dataeff.coslow import compute_coslow

    examples = [
        Example(prompt=f"Question: {s}? Answer:", answer=LABELS[i % 2], id=f"e{i}") for i, s in enumerate(SENTENCES)
    ]
    examples.append(Example(prompt="Question: the lazy dog? Answer:", answer="yes " * 2000, id="essay"))
    with pytest.warns(UserWarning, match="left out example essay: answer is"):
        res = compute_coslow(tiny_loaded, examples, progress=False)
    assert res.n_examples == len(SENTENCES)
    assert [s["id"] for s in res.skipped] == ["essay"] and res.skipped[0]["limit"] == DEFAULT_MAX_ANSWER_TOKENS
    assert res.coslow == compute_coslow(tiny_loaded, examples[:-1], progress=False).coslow
    with pytest.warns(UserWarning), pytest.raises(DataError, match="at least 2 examples within the token bounds.*e0"):
        compute_coslow(tiny_loaded, examples[:2], max_prompt_tokens=3, progress=False)


# ------------------------------------------------------------------------------------- end to end


@pytest.fixture
def huge_prompt_project(make_project):
    """A project whose pool of 41 holds one 100,000-character prompt; yields ``(config, home)``."""
    pool = [
        Example(
            prompt=f"Question: Is the following sentence plausible? {SENTENCES[i % 6]} {i}. Answer:", id=f"q{i:03d}"
        )
        for i in range(40)
    ]
    pool.insert(17, Example(prompt=HUGE, id="huge-one"))
    return make_project(pool, prefix="bounds")


def test_bootstrap_skips_the_huge_prompt_names_it_and_scores_the_rest(huge_prompt_project):
    from flows.bootstrap import bootstrap
    from flows.services import open_services

    cfg, home = huge_prompt_project
    boot = bootstrap(cfg.name, home=str(home))
    assert [s["id"] for s in boot["skipped"]] == ["huge-one"]
    assert boot["skipped"][0]["reason"].startswith("prompt is ")
    assert "the limit is 1,024 (max_prompt_tokens in the project config)" in boot["skipped"][0]["reason"]
    assert boot["scored"] == 40 and boot["lowconf"] == 4 and boot["eval"] == 8
    svc = open_services(cfg)
    roles = svc.tracker.read_bootstrap(cfg.name, cfg.model)
    assert "huge-one" not in set(roles["lowconf"]) | set(roles["eval"])
    huge_task = next(t.task_id for t in svc.ls.tasks(cfg.label_studio_project_id) if t.dataeff_id == "huge-one")
    assert huge_task not in {p["task_id"] for p in ls_testing.predictions(svc.ls, cfg.label_studio_project_id)}
    again = bootstrap(cfg.name, home=str(home))  # idempotent: roles kept, nothing re-checked
    assert "skipped" not in again and again["lowconf"] == 4
