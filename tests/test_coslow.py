"""Fast CoS-Low (one backward per batch, Gram matrix) vs the naive reference oracle on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.baseline import naive_coslow, naive_lora_gradients, naive_pairwise_cosines
from dataeff.coslow import compute_coslow, coslow_from_gram
from dataeff.data import Example
from dataeff.errors import DataError
from dataeff.gradients import lora_gradient_gram
from dataeff.models import LoraSettings, attach_lora

PROMPTS = [
    "Is the following sentence plausible?",
    "Play some jazz music please.",
    "What is the weather like tomorrow in Paris? Play",
    "Wake me up",
    "The quick brown fox jumps over the lazy dog. 0 1 2",
    "Classify the intent of the utterance.",
]
ANSWERS = ["yes", "no", "get_weather", "set_alarm please", "positive negative", "play_music"]
EXAMPLES = [Example(p, a, f"e{i}") for i, (p, a) in enumerate(zip(PROMPTS, ANSWERS))]
LORA = LoraSettings(r=8, alpha=16)


def _naive_cosine_matrix(loaded, chat_template, seed=3):
    peft_model = attach_lora(loaded.model, LORA, seed)
    try:
        peft_model.eval()
        grads = naive_lora_gradients(peft_model, loaded.tokenizer, EXAMPLES, chat_template)
        fast = lora_gradient_gram(
            peft_model, loaded.tokenizer, EXAMPLES, chat_template=chat_template, batch_size=4, progress=False
        )
    finally:
        peft_model.unload()
        if hasattr(loaded.model, "peft_config"):
            del loaded.model.peft_config
    return grads, fast


@pytest.mark.parametrize("chat_template", [False, True])
def test_gram_matches_per_example_gradients(tiny_loaded, chat_template):
    grads, gram = _naive_cosine_matrix(tiny_loaded, chat_template)
    flat = torch.stack([torch.cat([g.flatten() for g in d.values()]) for d in grads]).double()
    assert any("lora_A" in k for k in grads[0]) and all(
        float(v.abs().max()) == 0 for k, v in grads[0].items() if "lora_A" in k
    )
    exact = (flat @ flat.T).numpy()
    assert np.allclose(gram, exact, rtol=1e-4, atol=1e-6 * np.abs(exact).max())
    iu = np.triu_indices(len(EXAMPLES), 1)
    cos = gram / np.sqrt(np.outer(np.diag(gram), np.diag(gram)))
    assert np.allclose(cos[iu], naive_pairwise_cosines(grads), atol=1e-4)


@pytest.mark.parametrize("chat_template", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_coslow_matches_naive_oracle(tiny_loaded, chat_template, batch_size):
    ref = naive_coslow(
        tiny_loaded.model, tiny_loaded.tokenizer, EXAMPLES, lora=LORA, seed=3, chat_template=chat_template
    )
    res = compute_coslow(
        tiny_loaded, EXAMPLES, lora=LORA, seed=3, chat_template=chat_template, batch_size=batch_size, progress=False
    )
    assert abs(res.coslow - ref) < 1e-4
    assert -1 < res.coslow < 1 and res.n_examples == len(EXAMPLES) and res.lora["r"] == 8


def test_base_model_stays_clean_and_draws_are_seeded(tiny_loaded):
    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    a = compute_coslow(tiny_loaded, EXAMPLES, lora=LORA, seed=0, draws=3, progress=False)
    b = compute_coslow(tiny_loaded, EXAMPLES, lora=LORA, seed=0, draws=1, progress=False)
    after = tiny_loaded.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not any("lora" in name for name, _ in tiny_loaded.model.named_modules())
    assert len(a.draws) == 3 and a.coslow == a.draws[0] == pytest.approx(b.coslow, abs=1e-12)
    assert len(set(np.round(a.draws, 10))) == 3 and a.std > 0
    assert a.mean == pytest.approx(np.mean(a.draws))


def test_projection_mode_is_close_and_seeded(tiny_loaded):
    exact = compute_coslow(tiny_loaded, EXAMPLES, lora=LORA, seed=1, progress=False).coslow
    p1 = compute_coslow(tiny_loaded, EXAMPLES, lora=LORA, seed=1, projection_dim=8 * 256, batch_size=2, progress=False)
    p2 = compute_coslow(tiny_loaded, EXAMPLES, lora=LORA, seed=1, projection_dim=8 * 256, batch_size=5, progress=False)
    assert p1.projection_dim == 2048 and p1.coslow == pytest.approx(p2.coslow, abs=1e-6)
    # the tiny model's modules have at most 64 output rows < 256 buckets: almost no collisions
    assert abs(p1.coslow - exact) < 0.05


def test_coslow_from_gram_and_errors():
    g = np.array([[4.0, 2.0, 0.0], [2.0, 1.0, 0.5], [0.0, 0.5, 1.0]])
    # cosines: (0,1) = 1.0, (0,2) = 0, (1,2) = 0.5 -> median 0.5
    assert coslow_from_gram(g) == pytest.approx(0.5)
    with pytest.raises(DataError, match=r"row\(s\) \[1\]"):
        coslow_from_gram(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(DataError, match="at least 2"):
        coslow_from_gram(np.ones((1, 1)))


def test_bad_inputs_give_clear_errors(tiny_loaded):
    with pytest.raises(DataError, match="1 labeled rows, at least 2"):
        compute_coslow(tiny_loaded, EXAMPLES[:1], lora=LORA, progress=False)
    with pytest.raises(DataError, match="no gold answer"):
        compute_coslow(tiny_loaded, EXAMPLES[:3] + [Example("Play", None, "u1")], lora=LORA, progress=False)
    with pytest.raises(ValueError, match="no LoRA layers"):
        lora_gradient_gram(tiny_loaded.model, tiny_loaded.tokenizer, EXAMPLES, progress=False)


def test_bf16_model_runs_warns_and_records_its_dtype(tiny_model_dir, tiny_loaded):
    """An explicit bf16 model still works (fp32 accumulation), is recorded as bf16 and warned about."""
    from dataeff.models import load_model

    bf16 = load_model(str(tiny_model_dir), device="cpu", dtype="bf16")
    exact = compute_coslow(tiny_loaded, EXAMPLES, lora=LORA, seed=2, batch_size=3, progress=False)
    with pytest.warns(UserWarning, match="CoS-Low in bf16: calibrations are fitted in fp32"):
        low = compute_coslow(bf16, EXAMPLES, lora=LORA, seed=2, batch_size=3, progress=False)
    assert abs(low.coslow - exact.coslow) < 0.02
    assert (low.dtype, exact.dtype) == ("bf16", "fp32") and exact.device == "cpu"


def test_the_gpu_default_dtype_gives_fp32_coslow(tiny_model_dir, tiny_loaded):
    """The dtype a CUDA run gets by default, run here on CPU, reproduces fp32 CoS-Low within 0.005."""
    import torch

    from dataeff.models import load_model, resolve_dtype

    gpu_default = resolve_dtype(torch.device("cuda"))
    assert gpu_default == resolve_dtype(torch.device("cpu")) == torch.float32
    model = load_model(str(tiny_model_dir), device="cpu", dtype=gpu_default)
    exact = compute_coslow(tiny_loaded, EXAMPLES, lora=LORA, seed=2, batch_size=3, progress=False).coslow
    default = compute_coslow(model, EXAMPLES, lora=LORA, seed=2, batch_size=3, progress=False).coslow
    assert abs(default - exact) < 0.005


def test_a_dtype_other_than_the_calibrations_is_warned_about():
    from dataeff.calibration import Calibration, dtype_warning

    fitted = Calibration("smollm2-lora", 0.5, 0.3, dtype="fp32")
    assert dtype_warning(fitted, "fp32") is None
    assert "fitted on fp32" in dtype_warning(fitted, "bf16")
    assert dtype_warning(Calibration("paper", 0.5, 0.3), "bf16") is None  # a built-in records no dtype
