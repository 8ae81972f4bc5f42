"""The loop's decision: request more labels, fine-tune now at a budget, or stop.

:func:`decide` applies these rules in order; the first that matches wins.

1. **No estimate yet** (the low-confidence batch is not complete, or no labels-needed estimate
   exists): ``request_labels`` for the rest of the low-confidence batch (0 when it is complete
   and only the estimate is missing).
2. **Target reached**: a measured fine-tune score reached the primary target (normalised via
   the zero-shot score and the ceiling, or compared directly when the target is absolute):
   ``stop``.
3. **Label cap reached**: ``labeled_count >= label_cap``: ``stop``.
4. **Fine-tune due**: a grid budget (> 0) at or below the labeled count has no fine-tune yet:
   ``finetune`` at the largest such budget (the one that can end labeling soonest; smaller
   pending budgets follow in later iterations).
5. **Beyond the cap**, only on evidence: the posterior probability of reaching the primary
   target within ``label_cap`` is below ``stop_p_within_cap`` (default 10%) **and** the measured
   fine-tunes cover at least ``stop_min_coverage`` (default 80%) of the log axis up to the cap
   (``log2(largest measured budget) / log2(label_cap)``). Three points near the floor do not
   cover the axis: a curve that stays flat and rises late looks exactly like that.
6. Otherwise **request** labels up to the next grid budget at or below the cap (each budget is
   measured on the way, so the first budget that reaches the target ends labeling); past the last
   grid budget, ``min(batch_size_max, max(batch_size_min, predicted need - labeled))``; never past
   ``label_cap``. ``request_to_need=True`` restores the old sizing
   ``min(batch_size_max, max(batch_size_min, next budget - labeled, predicted need - labeled))``.

The settings ``stop_p_within_cap=0.5, stop_min_coverage=0.0, request_to_need=True`` reproduce the
rule the loop used before the replay study (stop once any fine-tune is measured and the median
need is beyond the cap); ``dataeff bench replay`` reports both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from dataeff.defaults import TARGETS
from dataeff.efficiency import BUDGET_GRID, MAX_BUDGET, LabelsNeeded
from dataeff.errors import DataError

ACTIONS = ("request_labels", "finetune", "stop")


@dataclass(frozen=True)
class PolicySettings:
    """Knobs of :func:`decide`.

    Attributes:
        targets: normalised targets reported in status texts (shares in (0, 1]).
        primary_target: the target that stops labeling (normalised share, or an absolute score
            when ``absolute_target``).
        absolute_target: ``primary_target`` is an absolute score (e.g. 0.85 accuracy).
        label_cap: never ask for more labels than this in total.
        batch_size_min, batch_size_max: bounds of one labels request (after the low-conf batch).
        low_conf_batch_size: size of the low-confidence batch CoS-Low needs (32 in the paper).
        budget_grid: budgets at which to fine-tune (0 = zero-shot, measured separately).
        stop_p_within_cap: stop "beyond the cap" only when the probability of reaching the
            primary target within ``label_cap`` is below this.
        stop_min_coverage: ... and the largest measured budget covers at least this share of the
            log axis up to the cap (0 = any measured fine-tune is enough).
        request_to_need: size requests by the predicted need too (the pre-replay rule), not only
            by the next grid budget.
        reached_p_min: a measured score counts as "target reached" only when the posterior also
            gives at least this probability that the target is reached by that budget (one lucky
            fine-tune on a noisy eval set does not end labeling); 0 = the measured score alone.
    """

    targets: tuple[float, ...] = TARGETS
    primary_target: float = 0.9
    absolute_target: bool = False
    label_cap: int = MAX_BUDGET  # no cap short of the curve's cut-off N
    batch_size_min: int = 50
    batch_size_max: int = 500
    low_conf_batch_size: int = 32
    budget_grid: tuple[int, ...] = BUDGET_GRID
    stop_p_within_cap: float = 0.1
    stop_min_coverage: float = 0.8
    request_to_need: bool = False
    reached_p_min: float = 0.3

    @classmethod
    def legacy(cls, **kw) -> PolicySettings:
        """The rule before the replay study (see the module docstring), for comparisons."""
        return cls(stop_p_within_cap=0.5, stop_min_coverage=0.0, request_to_need=True, reached_p_min=0.0, **kw)

    def __post_init__(self) -> None:
        if not self.absolute_target and not 0 < self.primary_target <= 1:
            raise DataError(f"primary_target {self.primary_target} must be a share in (0, 1] (or set absolute_target)")
        if not 1 <= self.batch_size_min <= self.batch_size_max:
            raise DataError(
                f"need 1 <= batch_size_min ({self.batch_size_min}) <= batch_size_max ({self.batch_size_max})"
            )
        if self.label_cap < 1 or self.low_conf_batch_size < 1:
            raise DataError("label_cap and low_conf_batch_size must be >= 1")
        if not 0 <= self.stop_p_within_cap <= 1 or not 0 <= self.stop_min_coverage <= 1:
            raise DataError("stop_p_within_cap and stop_min_coverage must be in [0, 1]")
        if list(self.budget_grid) != sorted(set(self.budget_grid)) or self.budget_grid[0] < 0:
            raise DataError(f"budget_grid must be strictly increasing non-negative integers, got {self.budget_grid}")


@dataclass(frozen=True)
class LoopState:
    """What the loop knows at one iteration.

    Attributes:
        labeled_count: labeled training items now (low-confidence batch included).
        low_conf_batch_complete: every item of the low-confidence batch is labeled.
        low_conf_labeled: labeled items of the low-confidence batch (for the "still missing" count).
        need: labels needed for the primary target (``Prediction.need`` or
            ``CurvePosterior.need``/``labels_needed``), ``None`` before the first estimate.
        coslow: the CoS-Low behind ``need`` (for the status text), if any.
        finetuned: ``{budget: measured score}`` of the fine-tunes done so far.
        zero_shot: measured zero-shot score ``s0`` (needed to judge a normalised target).
        ceiling: the ceiling ``h`` assumed (human score, or the posterior's estimate).
        p_within_cap: probability that the primary target is reached within the label cap
            (from the posterior), ``None`` when unknown.
        p_reached: ``{budget: P(the target is reached with at most budget labels)}`` from the
            posterior, for the measured budgets (empty without a posterior).
    """

    labeled_count: int
    low_conf_batch_complete: bool = False
    low_conf_labeled: int = 0
    need: LabelsNeeded | None = None
    coslow: float | None = None
    finetuned: Mapping[int, float] = field(default_factory=dict)
    zero_shot: float | None = None
    ceiling: float | None = None
    p_within_cap: float | None = None
    p_reached: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labeled_count < 0 or self.low_conf_labeled < 0:
            raise DataError("labeled counts must be >= 0")


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`.

    Attributes:
        action: ``"request_labels"``, ``"finetune"`` or ``"stop"``.
        n_labels: labels to request (``request_labels``), else 0.
        budget: the budget to fine-tune at (``finetune``), the budget that reached the target
            (``stop`` by ``target_reached``), else ``None``.
        reason: one human sentence explaining the rule that fired.
        status_text: one line for annotators.
        rule: short id of the rule (``"no_estimate"``, ``"target_reached"``, ``"cap_reached"``,
            ``"finetune_due"``, ``"beyond_cap"``, ``"request_more"``).
    """

    action: str
    n_labels: int
    budget: int | None
    reason: str
    status_text: str
    rule: str

    def as_dict(self) -> dict:
        return {
            "action": self.action,
            "n_labels": self.n_labels,
            "budget": self.budget,
            "reason": self.reason,
            "status_text": self.status_text,
            "rule": self.rule,
        }


def round_labels(n: float) -> int:
    """Round a label count for people: exact below 100, to 10 below 1,000, else to 2-3 significant figures."""
    if not math.isfinite(n):
        raise ValueError("cannot round an infinite label count")
    n = max(0.0, n)
    if n < 100:
        return int(math.ceil(n))
    if n < 1000:
        return int(round(n, -1))
    return int(round(n, -1 if n < 10000 else -2))


def _fmt(n: float) -> str:
    return "never" if not math.isfinite(n) else f"{round_labels(n):,}"


def _target_phrase(settings: PolicySettings) -> str:
    t = settings.primary_target
    if settings.absolute_target:
        return f"a score of {t:g}"
    return f"{t * 100:g}% of the achievable gain"


def _status(state: LoopState, settings: PolicySettings) -> str:
    need = state.need
    if need is None or not state.low_conf_batch_complete:
        left = 0 if state.low_conf_batch_complete else max(settings.low_conf_batch_size - state.low_conf_labeled, 0)
        if not left:
            return "dataeff is computing its estimate from the hard examples"
        return f"dataeff needs {left} more of the {settings.low_conf_batch_size} hard examples first"
    more = need.median - state.labeled_count
    if not math.isfinite(need.median):
        return f"{_target_phrase(settings)} is not expected within the label budget"
    if more <= 0:
        text = f"enough labels are expected for {_target_phrase(settings)} (about {_fmt(need.median)} in total)"
    else:
        text = f"about {_fmt(more)} more labels expected for {_target_phrase(settings)}"
    if need.lo != need.hi:
        lo_more = max(need.lo - state.labeled_count, 0)
        hi_more = need.hi - state.labeled_count
        text += f" (likely {_fmt(lo_more)}-{_fmt(hi_more)})" if hi_more > 0 else ""
    return text


def _reached(state: LoopState, settings: PolicySettings) -> tuple[int, float] | None:
    """The smallest fine-tuned budget whose score reached the primary target, with its share."""
    for budget in sorted(state.finetuned):
        score = state.finetuned[budget]
        if settings.absolute_target:
            if score >= settings.primary_target and state.p_reached.get(budget, 1.0) >= settings.reached_p_min:
                return budget, score
            continue
        if state.zero_shot is None or state.ceiling is None or not state.ceiling > state.zero_shot:
            return None  # a normalised target cannot be judged without s0 and h
        share = (score - state.zero_shot) / (state.ceiling - state.zero_shot)
        if share >= settings.primary_target - 1e-12 and state.p_reached.get(budget, 1.0) >= settings.reached_p_min:
            return budget, share
    return None


def _coverage(measured_max: int, cap: int) -> float:
    """Share of the log axis up to ``cap`` covered by fine-tunes up to ``measured_max`` labels."""
    if measured_max <= 1 or cap <= 1:
        return 0.0
    return min(1.0, math.log2(measured_max) / math.log2(cap))


def decide(state: LoopState, settings: PolicySettings | None = None) -> Decision:
    """Apply the rules of this module's docstring to ``state``.

    Args:
        state: what the loop knows now.
        settings: policy knobs (defaults: :class:`PolicySettings`).

    Returns:
        A :class:`Decision` with a reason sentence and a one-line status for annotators.
    """
    st = settings or PolicySettings()
    status = _status(state, st)
    labeled = state.labeled_count
    phrase = _target_phrase(st)

    if state.need is None or not state.low_conf_batch_complete:
        left = 0 if state.low_conf_batch_complete else max(st.low_conf_batch_size - state.low_conf_labeled, 0)
        why = (
            f"CoS-Low needs the {st.low_conf_batch_size} low-confidence examples labeled; {left} are still missing"
            if left
            else "the low-confidence batch is labeled; waiting for the CoS-Low estimate"
        )
        return Decision("request_labels", left, None, why + ".", status, "no_estimate")

    reached = _reached(state, st)
    if reached is not None:
        budget, value = reached
        predicted = f" (predicted {_fmt(state.need.median)})" if math.isfinite(state.need.median) else ""
        why = f"stop: {phrase} reached at {budget:,} labels{predicted}."
        return Decision("stop", 0, budget, why, why, "target_reached")

    if labeled >= st.label_cap:
        why = f"stop: the label cap of {st.label_cap:,} is reached without measuring {phrase}."
        return Decision("stop", 0, None, why, why, "cap_reached")

    pending = [b for b in st.budget_grid if 0 < b <= labeled and b not in state.finetuned]
    if pending:
        budget = max(pending)
        why = f"{labeled:,} labels cover budget {budget:,}, which has no fine-tune yet: fine-tune to measure the curve."
        return Decision("finetune", 0, budget, why, status, "finetune_due")

    need = state.need
    measured = [b for b in state.finetuned if b > 0]
    coverage = _coverage(max(measured, default=0), st.label_cap)
    p_in = state.p_within_cap
    if p_in is None:  # no posterior: the median need stands in for the probability
        p_in = 0.0 if (not math.isfinite(need.median) or need.median > st.label_cap) else 1.0
    if measured and coverage >= st.stop_min_coverage and p_in < st.stop_p_within_cap:
        why = (
            f"stop: {phrase} is predicted to need {_fmt(need.median)} labels, beyond the cap of {st.label_cap:,}"
            f" (P(within the cap) = {p_in:.0%}; measured up to {max(measured):,} labels)."
        )
        return Decision("stop", 0, None, why, why, "beyond_cap")

    next_budgets = [b for b in st.budget_grid if labeled < b <= st.label_cap]
    to_next = (next_budgets[0] - labeled) if next_budgets else 0
    to_need = int(math.ceil(need.median - labeled)) if math.isfinite(need.median) else st.batch_size_max
    if st.request_to_need:
        n = min(st.batch_size_max, max(st.batch_size_min, to_next, to_need))
    elif to_next:
        n = to_next
    else:
        n = min(st.batch_size_max, max(st.batch_size_min, to_need))
    n = max(1, min(n, st.label_cap - labeled))
    parts = [f"{to_next:,} to the next fine-tune budget ({next_budgets[0]:,})"] if next_budgets else []
    parts.append(f"about {_fmt(max(to_need, 0))} more predicted for {phrase}")
    if state.p_within_cap is not None:
        parts.append(f"P(within the cap of {st.label_cap:,}) = {state.p_within_cap:.0%}")
    why = f"request {n:,} more labels ({'; '.join(parts)})."
    status = f"label the next {n:,} in the 'dataeff priority' tab; {status}"
    return Decision("request_labels", int(n), None, why, status, "request_more")


__all__ = ["ACTIONS", "Decision", "LoopState", "PolicySettings", "decide", "round_labels"]
