"""Every branch of the decision policy, with real predictions/posteriors as inputs."""

from __future__ import annotations

import pytest

from dataeff.efficiency import LabelsNeeded, predict
from dataeff.errors import DataError
from dataeff.policy import LoopState, PolicySettings, decide, round_labels
from dataeff.posterior import fit_posterior

NEED = LabelsNeeded(target=0.9, median=1030.0, lo=600.0, hi=2100.0)


def _state(**kw):
    base = dict(
        labeled_count=32,
        low_conf_batch_complete=True,
        low_conf_labeled=32,
        need=NEED,
        coslow=0.47,
        zero_shot=0.3,
        ceiling=0.9,
    )
    base.update(kw)
    return LoopState(**base)


def test_no_estimate_requests_low_conf_batch():
    d = decide(LoopState(labeled_count=10, low_conf_labeled=10))
    assert (d.action, d.n_labels, d.rule) == ("request_labels", 22, "no_estimate")
    assert "22" in d.reason and "22 more of the 32 hard examples" in d.status_text
    d = decide(LoopState(labeled_count=32, low_conf_batch_complete=True, low_conf_labeled=32))
    assert (d.action, d.n_labels, d.rule) == ("request_labels", 0, "no_estimate")


def test_finetune_at_largest_pending_grid_budget():
    d = decide(_state(labeled_count=230, finetuned={50: 0.5}))
    assert (d.action, d.budget, d.rule) == ("finetune", 200, "finetune_due")
    d = decide(_state(labeled_count=230, finetuned={50: 0.5, 200: 0.6}))
    assert (d.action, d.budget) == ("finetune", 100)


def test_stop_when_a_measured_point_reaches_target():
    # (0.85 - 0.3) / (0.9 - 0.3) = 0.917 >= 0.9
    d = decide(_state(labeled_count=520, finetuned={50: 0.5, 100: 0.6, 200: 0.7, 500: 0.85}))
    assert (d.action, d.rule) == ("stop", "target_reached")
    assert "90% of the achievable gain reached at 500 labels (predicted 1,030)" in d.reason
    # absolute target: 0.85 is not >= 0.88 -> keep going
    st = PolicySettings(primary_target=0.88, absolute_target=True)
    d = decide(_state(labeled_count=520, finetuned={50: 0.5, 100: 0.6, 200: 0.7, 500: 0.85}), st)
    assert d.action == "request_labels"
    # without a ceiling a normalised target cannot be judged from measured points
    d = decide(_state(labeled_count=520, ceiling=None, finetuned={50: 0.5, 100: 0.6, 200: 0.7, 500: 0.85}))
    assert d.action == "request_labels"


def test_stop_when_cap_reached_or_need_beyond_cap():
    d = decide(
        _state(labeled_count=1000, finetuned={50: 0.4, 100: 0.4, 200: 0.4, 500: 0.4, 1000: 0.4}),
        PolicySettings(label_cap=1000),
    )
    assert (d.action, d.rule) == ("stop", "cap_reached")
    beyond = LabelsNeeded(0.9, 4000.0, 2000.0, 5000.0)
    # beyond the cap with little chance, measured across >= 80% of the log axis up to the cap: stop
    covered = {50: 0.4, 100: 0.4, 200: 0.4, 500: 0.4}  # log2(500) / log2(2000) = 0.82
    d = decide(
        _state(labeled_count=500, finetuned=covered, need=beyond, p_within_cap=0.04), PolicySettings(label_cap=2000)
    )
    assert (d.action, d.rule) == ("stop", "beyond_cap")
    assert "4,000" in d.reason and "2,000" in d.reason and "4%" in d.reason
    # the same with thin evidence (measured up to 100 of a 2,000 cap): keep measuring
    thin = {50: 0.4, 100: 0.4}
    d = decide(
        _state(labeled_count=100, finetuned=thin, need=beyond, p_within_cap=0.04), PolicySettings(label_cap=2000)
    )
    assert d.action == "request_labels"
    # covered but still a real chance within the cap: keep labeling
    d = decide(
        _state(labeled_count=500, finetuned=covered, need=beyond, p_within_cap=0.25), PolicySettings(label_cap=2000)
    )
    assert d.action == "request_labels"
    # the prior alone never stops labeling, however far beyond the cap it points
    d = decide(_state(need=LabelsNeeded(0.9, 4000.0, 2500.0, 5000.0), p_within_cap=0.0), PolicySettings(label_cap=2000))
    assert d.action == "request_labels"
    # the pre-replay rule stopped after one fine-tune and even on the prior alone
    legacy = PolicySettings.legacy(label_cap=2000)
    assert decide(_state(labeled_count=60, finetuned={50: 0.4}, need=beyond), legacy).rule == "beyond_cap"


def test_request_more_sizes():
    # the next grid budget drives: 50 - 32 = 18
    d = decide(_state())
    assert (d.action, d.n_labels, d.rule) == ("request_labels", 18, "request_more")
    assert d.status_text == (
        "label the next 18 in the 'dataeff priority' tab; "
        "about 1,000 more labels expected for 90% of the achievable gain (likely 570-2,070)"
    )
    d = decide(
        _state(labeled_count=210, finetuned={50: 0.5, 100: 0.5, 200: 0.5}, need=LabelsNeeded(0.9, 300.0, 250.0, 400.0))
    )
    assert d.n_labels == 290  # 500 - 210 to the next budget
    # grid budgets above the cap do not count; past the last one, toward the need within the batch bounds
    d = decide(
        _state(labeled_count=510, finetuned={50: 0.5, 100: 0.5, 200: 0.5, 500: 0.5}, p_within_cap=0.5),
        PolicySettings(label_cap=900),
    )
    assert d.n_labels == 390  # need 1030 - 510 = 520, but never past the cap of 900
    d = decide(
        _state(labeled_count=1010, finetuned={50: 0.5, 100: 0.5, 200: 0.5, 500: 0.5, 1000: 0.5}),
        PolicySettings(label_cap=1050),
    )
    assert d.n_labels == 40
    # the pre-replay sizing: max(batch min, to next budget, to the need), capped by batch max
    assert decide(_state(), PolicySettings.legacy()).n_labels == 500


def test_with_real_prediction_and_posterior():
    pred = predict(0.65, 0.54, 0.31, auc_interval=(0.55, 0.77))
    d = decide(_state(need=pred.need(0.9), coslow=pred.coslow))
    assert d.action == "request_labels" and d.status_text.startswith(
        "label the next 18 in the 'dataeff priority' tab; about 1,000 more labels"
    )
    post = fit_posterior(
        0.2, 0.05, 0.3, [(50, 0.31, 500), (100, 0.31, 500), (500, 0.31, 500), (1000, 0.32, 500)], human_score=0.9
    )
    p_in = float(post.weights[post.labels_grid(0.9) <= 3000].sum())
    d = decide(
        _state(
            labeled_count=1000,
            need=post.need(0.9),
            finetuned={50: 0.31, 100: 0.31, 200: 0.31, 500: 0.31, 1000: 0.32},
            p_within_cap=p_in,
        ),
        PolicySettings(label_cap=3000),
    )
    assert p_in < 0.1 and d.action == "stop" and d.rule == "beyond_cap"


def test_settings_validation_and_rounding():
    with pytest.raises(DataError):
        PolicySettings(primary_target=1.5)
    with pytest.raises(DataError):
        PolicySettings(batch_size_min=600, batch_size_max=500)
    with pytest.raises(DataError):
        PolicySettings(budget_grid=(0, 100, 50))
    assert [round_labels(x) for x in (7.2, 123.0, 998.0, 1034.0, 23456.0)] == [8, 120, 1000, 1030, 23500]
