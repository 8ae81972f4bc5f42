"""The real SmolLM2-135M-Instruct: confidence scoring and CoS-Low on sports-plausibility questions."""

from __future__ import annotations

import math

import pytest

from dataeff.confidence import score_confidence
from dataeff.coslow import compute_coslow
from dataeff.data import Example
from dataeff.models import LoraSettings

pytestmark = pytest.mark.slow

# Written for this test in the style of BIG-bench sports_understanding (plausible: yes / no).
SENTENCES = [
    ("Lionel Messi curled a free kick into the top corner.", "yes"),
    ("Tom Brady hit a three pointer at the buzzer.", "no"),
    ("Serena Williams served an ace on match point.", "yes"),
    ("Connor McDavid scored a touchdown in overtime.", "no"),
    ("LeBron James dunked on the fast break.", "yes"),
    ("Mookie Betts was offside in the penalty box.", "no"),
    ("Patrick Mahomes threw a deep pass to the end zone.", "yes"),
    ("Kylian Mbappe hit a home run to left field.", "no"),
]
EXAMPLES = [
    Example(f"Is this sentence plausible? {s}\nAnswer yes or no.", a, f"s{i}") for i, (s, a) in enumerate(SENTENCES)
]


def test_confidence_on_real_model(smollm2):
    scores = score_confidence(smollm2, None, EXAMPLES, batch_size=8, max_new_tokens=8, progress=False)
    assert len(scores) == len(EXAMPLES)
    assert all(s.n_tokens > 0 and 0 < s.confidence <= 1 for s in scores), scores
    assert all(math.isfinite(s.perplexity) and s.perplexity >= 1 for s in scores)
    assert any(s.answer.strip().lower().startswith(("yes", "no")) for s in scores), [s.answer for s in scores]


def test_coslow_on_real_model(smollm2):
    res = compute_coslow(smollm2, EXAMPLES[:6], lora=LoraSettings(), seed=0, batch_size=6, progress=False)
    assert math.isfinite(res.coslow) and -1 < res.coslow < 1
    assert res.n_examples == 6 and res.lora["r"] == 64
    # the same questions share one answer format: their gradients point in similar directions
    assert res.coslow > 0.05
    sketch = compute_coslow(smollm2, EXAMPLES[:6], seed=0, batch_size=3, projection_dim=65536, progress=False)
    assert abs(sketch.coslow - res.coslow) < 0.05
