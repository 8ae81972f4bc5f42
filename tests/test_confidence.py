"""Confidence scores (batched, one generate call) and the low-confidence draw."""

from __future__ import annotations

import math

import pytest
from test_generation import PROMPTS, peaky  # noqa: F401  (fixture)

from benchmarks.baseline import naive_confidence
from dataeff.confidence import (
    ConfidenceScore,
    ConfidenceScores,
    SmallPoolWarning,
    confidence_from_probs,
    score_confidence,
    select_low_confidence,
)
from dataeff.data import Example
from dataeff.errors import DataError


def _scores(values):
    return [
        ConfidenceScore(id=f"x{i}", answer="a", confidence=v, perplexity=1 / max(v, 1e-9), n_tokens=1)
        for i, v in enumerate(values)
    ]


def test_confidence_from_probs():
    conf, ppl = confidence_from_probs([0.5, 1.0])
    assert conf == pytest.approx(0.75)
    assert ppl == pytest.approx(math.exp(-(math.log(0.5) + 0) / 2))
    assert confidence_from_probs([]) == (0.0, math.inf)


def test_score_confidence_matches_generate_then_rescore(peaky):  # noqa: F811
    model, tok = peaky
    examples = [Example(prompt=p, id=f"ex{i}") for i, p in enumerate(PROMPTS)]
    scores = score_confidence(
        model, tok, examples, batch_size=4, max_new_tokens=12, chat_template=False, progress=False
    )
    ref = naive_confidence(model, tok, PROMPTS, max_new_tokens=12, chat_template=False)
    assert [s.id for s in scores] == [e.id for e in examples]
    assert any(s.n_tokens == 0 for s in scores) and any(s.n_tokens > 3 for s in scores)
    for s, (ids, probs) in zip(scores, ref):
        assert s.n_tokens == len(ids)
        if not probs:
            assert s.confidence == 0.0 and s.perplexity == math.inf
        else:
            assert s.confidence == pytest.approx(sum(probs) / len(probs), abs=1e-4)
            nll = -sum(math.log(p) for p in probs) / len(probs)
            assert s.perplexity == pytest.approx(math.exp(nll), rel=1e-4)


def test_score_confidence_accepts_loaded_model_and_strings(tiny_loaded):
    scores = score_confidence(tiny_loaded, None, ["Play some jazz", "Wake me up"], max_new_tokens=3, progress=False)
    assert [s.id for s in scores] == ["0", "1"]
    assert all(0 < s.confidence <= 1 and s.n_tokens == 3 for s in scores)
    # the batch size chosen for the device (CPU: 16) and the decoder are recorded for callers to log
    assert isinstance(scores, ConfidenceScores) and (scores.batch_size, scores.decoder) == (16, "evict")
    assert score_confidence(tiny_loaded, None, ["Play"], batch_size=3, max_new_tokens=2, progress=False).batch_size == 3
    with pytest.raises(DataError, match="example 1"):
        score_confidence(tiny_loaded, None, ["ok", "  "], progress=False)


def test_select_low_confidence_draws_from_bottom_decile():
    values = [i / 1000 for i in range(1000)][::-1]  # x999 is the least confident
    scores = _scores(values)
    ids = select_low_confidence(scores, k=32, seed=0)
    bottom = {s.id for s in sorted(scores, key=lambda s: s.confidence)[:100]}
    assert len(ids) == 32 == len(set(ids)) and set(ids) <= bottom
    conf = {s.id: s.confidence for s in scores}
    assert [conf[i] for i in ids] == sorted(conf[i] for i in ids)
    assert select_low_confidence(scores, k=32, seed=0) == ids
    assert select_low_confidence(scores, k=32, seed=1) != ids
    assert set(select_low_confidence(scores, k=32, seed=0, by="perplexity")) <= bottom


def test_select_low_confidence_small_pool_fallback_and_errors():
    scores = _scores([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4])
    with pytest.warns(SmallPoolWarning, match="least confident"):
        ids = select_low_confidence(scores, k=3, seed=0)
    assert ids == ["x1", "x5", "x3"]
    with pytest.raises(DataError, match=r"8 scored examples but k=32"):
        select_low_confidence(scores, k=32)
    with pytest.raises(ValueError):
        select_low_confidence(scores, k=3, by="entropy")
