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
    # draws after the first re-draw the adapter in place: each is the CoS-Low of a fresh attach with its seed
    for d in (1, 2):
        alone = compute_coslow(tiny_loaded, EXAMPLES, lora=LORA, seed=d, draws=1, progress=False)
        assert a.draws[d] == alone.coslow


@pytest.mark.parametrize(
    "lora", [LORA, LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=("q_proj", "down_proj"))]
)
def test_reseeding_in_place_gives_a_fresh_attachs_weights_bit_for_bit(tiny_loaded, lora):
    from dataeff.lora_reseed import can_reseed, reseed_lora

    def weights(peft_model) -> dict:
        return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}

    def detach(peft_model) -> None:
        peft_model.unload()
        if hasattr(tiny_loaded.model, "peft_config"):
            del tiny_loaded.model.peft_config

    fresh = {}
    for seed in (7, 8, 123):
        peft_model = attach_lora(tiny_loaded.model, lora, seed)
        fresh[seed] = weights(peft_model)
        detach(peft_model)
    peft_model = attach_lora(tiny_loaded.model, lora, 0)
    try:
        assert can_reseed(peft_model)
        for seed in (7, 123, 8):
            torch.manual_seed(999)  # whatever the RNG's state before, the seed decides
            assert reseed_lora(peft_model, seed)
            got = weights(peft_model)
            assert got.keys() == fresh[seed].keys() and len(got) > 0
            assert all(torch.equal(got[k], fresh[seed][k]) for k in got), seed
        peft_model.peft_config["default"].init_lora_weights = "gaussian"  # another scheme: not reproduced
        assert not can_reseed(peft_model) and not reseed_lora(peft_model, 7)
    finally:
        detach(peft_model)


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


def _gram(loaded, **kw):
    from dataeff.gradients import lora_gradient_gram_with_plan

    peft_model = attach_lora(loaded.model, LORA, 4)
    try:
        peft_model.eval()
        return lora_gradient_gram_with_plan(peft_model, loaded.tokenizer, EXAMPLES, progress=False, **kw)
    finally:
        peft_model.unload()
        if hasattr(loaded.model, "peft_config"):
            del loaded.model.peft_config


def test_streamed_rows_equal_the_in_memory_gram(tiny_loaded):
    """Every way of keeping the rows (forced on CPU by small budgets) gives the in-memory Gram matrix."""
    reference, plan = _gram(tiny_loaded, batch_size=2, memory_budget=2**30)
    assert plan.storage == "memory" and len(plan.passes) == 1
    one, plan = _gram(tiny_loaded, batch_size=16)
    assert plan.storage == "one-batch"
    default, plan = _gram(tiny_loaded, batch_size=2)
    assert plan.storage == "disk"  # the CPU default, as before
    tiny_budget = 4096  # bytes: fewer than one example's row (16 KB)
    disk, plan = _gram(tiny_loaded, batch_size=2, memory_budget=tiny_budget)
    assert plan.storage == "disk" and plan.memory_budget == tiny_budget  # read back in pairs of 1-row chunks
    host, plan = _gram(tiny_loaded, batch_size=4, storage="host", memory_budget=tiny_budget)
    assert plan.storage == "host"
    passes, plan = _gram(tiny_loaded, batch_size=4, storage="passes", memory_budget=tiny_budget)
    assert plan.storage == "passes" and len(plan.passes) > 10
    assert plan.summary()["passes"] == len(plan.passes) and plan.summary()["rows_mb"] > 0
    scale = np.abs(reference).max()
    for other in (one, default, disk, host, passes):
        assert np.allclose(other, reference, rtol=1e-5, atol=1e-6 * scale)
    assert abs(coslow_from_gram(passes) - coslow_from_gram(reference)) < 1e-6


def test_compute_coslow_records_batch_and_storage(tiny_loaded):
    exact = compute_coslow(tiny_loaded, EXAMPLES, lora=LORA, seed=5, batch_size=16, progress=False)
    streamed = compute_coslow(
        tiny_loaded, EXAMPLES, lora=LORA, seed=5, batch_size=2, memory_budget=4096, storage="passes", progress=False
    )
    assert abs(streamed.coslow - exact.coslow) < 1e-6
    assert exact.batch_size == 16 and exact.gram["storage"] == "one-batch"
    assert streamed.batch_size == 2 and streamed.gram["storage"] == "passes" and streamed.gram["passes"] > 1
    default = compute_coslow(tiny_loaded, EXAMPLES[:4], lora=LORA, seed=5, progress=False)
    assert default.batch_size == 8 and default.gram["storage"] == "one-batch"  # CPU default batch size
    from dataeff.coslow import CosLowResult

    assert CosLowResult.from_dict(default.as_dict()) == default


def test_out_of_memory_halves_the_batch_and_stays_exact(tiny_loaded, monkeypatch):
    import dataeff.gradients as gradients

    reference, _ = _gram(tiny_loaded, batch_size=16)
    real = gradients._answer_loss

    def small_batches_only(base_model, input_ids, attention, batch):
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(base_model, input_ids, attention, batch)

    monkeypatch.setattr(gradients, "_answer_loss", small_batches_only)
    with pytest.warns(UserWarning, match="ran out of device memory"):
        gram, plan = _gram(tiny_loaded, batch_size=16)
    assert plan.batch_size == 2 and plan.oom_retries == 3 and plan.storage == "disk"
    assert np.allclose(gram, reference, rtol=1e-5, atol=1e-6 * np.abs(reference).max())


LLAMA_8B_MODULES = [(4096, 64), (1024, 64), (1024, 64), (4096, 64), (14336, 64), (14336, 64), (4096, 64)] * 32


def test_plan_gram_chooses_storage_from_budgets():
    from dataeff.gradients import plan_gram

    mods = [(32, 8), (64, 8), (16, 4)]
    row = 4 * (32 * 8 + 64 * 8 + 16 * 4)
    assert plan_gram(10, mods, 10).storage == "one-batch"
    assert plan_gram(10, mods, 4, disk_budget=10 * row).storage == "disk"  # CPU, no budget: as before
    assert plan_gram(10, mods, 4, memory_budget=10 * row).storage == "memory"
    cuda = dict(device_type="cuda", memory_budget=10 * row - 1)
    assert plan_gram(10, mods, 4, host_budget=10 * row, **cuda).storage == "host"
    assert plan_gram(10, mods, 4, disk_budget=10 * row, **cuda).storage == "passes"  # 2 passes beat the disk
    tight = dict(device_type="cuda", memory_budget=row, disk_budget=10 * row)
    assert plan_gram(10, mods, 4, **tight).storage == "disk"  # 10 passes: the disk is cheaper
    plan = plan_gram(10, mods, 4, device_type="cuda", memory_budget=row // 3)
    assert plan.storage == "passes"
    covered: dict[int, list[tuple[int, int]]] = {}
    for group in plan.passes:
        assert 4 * 10 * sum(s.size for s in group) <= row // 3
        for s in group:
            covered.setdefault(s.module, []).append((s.lo, s.hi))
    for m, (out, _) in enumerate(mods):  # every output row of every module exactly once
        spans = sorted(covered[m])
        assert spans[0][0] == 0 and spans[-1][1] == out and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    with pytest.raises(ValueError, match="storage must be"):
        plan_gram(10, mods, 4, storage="tape")
    # 1,024 examples of a Llama-3.1-8B-shaped model, r=64: 360 GB of rows; ~60 GB left on an 80 GB GPU
    big = plan_gram(1024, LLAMA_8B_MODULES, 32, device_type="cuda", memory_budget=60 * 10**9, host_budget=64 * 10**9)
    assert big.storage == "passes" and len(big.passes) == 7 and big.row_bytes == 4 * 64 * 43008 * 32
