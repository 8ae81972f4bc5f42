"""The loop's decision step (``dataeff.step``), the Beta-curve posterior and the stop rules.

Pure logic: an identity calibration stands in for a fitted one (AUC' is fed where CoS-Low goes).
"""

from __future__ import annotations

import math

import pytest

from dataeff.errors import DataError
from dataeff.policy import Decision, PolicySettings
from dataeff.posterior_flex import FlexSettings, fit_flex_posterior
from dataeff.replay import identity_calibration
from dataeff.step import StepInputs, StepSettings, plan_request, step

CAL = identity_calibration(0.108)
DEMO_SEEN = {0: 0.117, 50: 0.133, 100: 0.183}  # what `make demo` measured before it stopped (issue 8)


def _settings(cap=1000, target=0.8, grid=(0, 50, 100, 200, 500, 1000), **kw) -> StepSettings:
    return StepSettings(policy=PolicySettings(primary_target=target, label_cap=cap, budget_grid=grid, **kw))


def test_no_coslow_yet_requests_the_rest_of_the_low_confidence_batch():
    out = step(StepInputs(labeled=10, lowconf_total=32, lowconf_labeled=10), None, _settings())
    assert out.assessment is None
    assert (out.decision.action, out.decision.n_labels, out.decision.rule) == ("request_labels", 22, "no_estimate")


def test_demo_points_do_not_stop_on_thin_evidence_but_the_old_rule_did():
    grid = (0, 50, 100, 200, 400, 633)
    inputs = StepInputs(labeled=100, coslow=0.488, measured=DEMO_SEEN, n_eval=60)
    new = step(inputs, CAL, _settings(cap=633, grid=grid))
    assert new.decision.action == "request_labels" and new.decision.n_labels == 100  # up to the 200 budget
    assert 0.1 < new.state.p_within_cap < 0.9
    old = step(
        inputs,
        CAL,
        StepSettings(
            curve_model="xp", policy=PolicySettings.legacy(primary_target=0.8, label_cap=633, budget_grid=grid)
        ),
    )
    assert old.decision.rule == "beyond_cap"  # the decision issue 8 measured as wrong


def test_flat_curve_measured_across_the_axis_stops_beyond_the_cap():
    flat = {0: 0.30, 50: 0.31, 100: 0.30, 200: 0.32, 500: 0.31}
    out = step(StepInputs(labeled=500, coslow=0.2, measured=flat, n_eval=500), CAL, _settings(cap=1000))
    assert out.decision.rule == "beyond_cap", out.decision.reason
    assert out.state.p_within_cap < 0.1
    assert "P(within the cap)" in out.decision.reason
    thin = {b: s for b, s in flat.items() if b <= 100}  # log2(100)/log2(1000) = 0.67 < 0.8 of the axis
    assert (
        step(StepInputs(labeled=100, coslow=0.2, measured=thin, n_eval=500), CAL, _settings(cap=1000)).decision.action
        == "request_labels"
    )


def test_target_reached_needs_the_measurement_and_the_posterior():
    rising = {0: 0.2, 50: 0.7, 100: 0.85, 200: 0.9}
    out = step(StepInputs(labeled=200, coslow=0.6, measured=rising, n_eval=500, human_score=0.9), CAL, _settings())
    assert out.decision.rule == "target_reached" and out.decision.budget == 100
    assert out.state.p_reached[100] >= 0.3 and out.state.p_reached[50] < 0.3
    # judged against the 90% upper ceiling: a plateau at 0.81 does not prove that 0.82 is the top
    plateau = {0: 0.2, 50: 0.6, 100: 0.75, 200: 0.8}
    out = step(StepInputs(labeled=200, coslow=0.6, measured=plateau, n_eval=500, human_score=0.82), CAL, _settings())
    assert out.decision.rule == "request_more" and out.state.ceiling > out.assessment.ceiling
    # one lucky point after a flat start: measured share >= 0.8 but the posterior disagrees
    lucky = {0: 0.2, 50: 0.2, 100: 0.21, 200: 0.7}
    out = step(
        StepInputs(labeled=200, coslow=0.3, measured=lucky, n_eval=60, human_score=0.75),
        CAL,
        _settings(reached_p_min=0.99),
    )
    assert out.decision.rule != "target_reached"


def test_inputs_are_checked():
    with pytest.raises(DataError, match="not a score"):
        StepInputs(labeled=0, measured={0: 1.2})
    with pytest.raises(DataError, match="non-negative integer"):
        StepInputs(labeled=0, measured={-5: 0.2})
    with pytest.raises(DataError, match="calibration"):
        step(StepInputs(labeled=32, coslow=0.4, measured={0: 0.1}), None)


def test_plan_request_order_and_priority():
    d = Decision("request_labels", 5, None, "", "", "request_more")
    plan = plan_request(d, ["l1", "l2"], ["e1"], ["p1", "p2", "p3", "l1", "e1"], labeled_ids={"l1"}, seed=0)
    assert plan.ids == ["l2", "e1"]  # pool items wait for the low-confidence batch
    plan = plan_request(d, ["l1"], ["e1"], ["p1", "p2", "p3", "p4", "p5"], labeled_ids={"l1", "e1"}, seed=0)
    assert len(plan.ids) == 5 and set(plan.ids) <= {"p1", "p2", "p3", "p4", "p5"}
    assert plan == plan_request(d, ["l1"], ["e1"], ["p5", "p4", "p3", "p2", "p1"], {"l1", "e1"}, seed=0)
    assert plan.priority_base == 1000 + 10 * 2 + 5
    assert plan_request(Decision("stop", 0, None, "", "", "beyond_cap"), [], [], ["p1"], set()).ids == []


def test_beta_posterior_contains_the_paper_shape_and_learns_a_late_rise():
    post = fit_flex_posterior(0.5, 0.108, 0.1, None, settings=FlexSettings())
    # the x^p slice (beta = 1) is on the grid and the prior centres on it
    assert any(abs(b - 1.0) < 1e-9 for b in post.beta_grid)
    prior_need = post.labels_needed(0.8)
    assert 50 < prior_need.median < 5000 and prior_need.lo < prior_need.median < prior_need.hi
    # a hockey stick: flat to 100, then a rise: the need moves to a few hundred
    late = fit_flex_posterior(0.5, 0.108, 0.1, {50: 0.12, 100: 0.13, 200: 0.5, 400: 0.7}, settings=FlexSettings())
    need = late.labels_needed(0.8)
    assert 200 < need.median < 1500 and math.isfinite(need.hi)
    band = late.curve_band([200, 400])
    assert abs(band[0][0] - 0.5) < 0.1 and abs(band[0][1] - 0.7) < 0.1
