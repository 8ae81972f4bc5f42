"""One decision step of the annotation loop, as a pure function.

Everything the loop decides after it has pulled labels and run the fine-tunes those labels
cover happens here, with no I/O: the assessment (CoS-Low prediction + curve posterior), the
loop state, the policy's decision, the order and priority of the next items to request, and the
summary that is logged. The Prefect flow (``flows/loop.py``), ``dataeff assess`` and the replay
benchmark (``dataeff bench replay``) all call :func:`step`; none of them holds a copy of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dataeff.assess import DEFAULT_CURVE_MODEL, DEFAULT_SEED_NOISE, Assessment, assess
from dataeff.calibration import Calibration
from dataeff.efficiency import MAX_BUDGET, target_key
from dataeff.errors import DataError
from dataeff.iteration import next_batch
from dataeff.policy import Decision, LoopState, PolicySettings, decide
from dataeff.queue import batch_base


@dataclass(frozen=True)
class StepSettings:
    """How :func:`step` assesses and decides.

    Attributes:
        policy: the decision rule's knobs (targets, cap, grid, stop thresholds).
        curve_model: posterior curve model (a key of :data:`dataeff.assess.CURVE_MODELS`).
        seed_noise: fine-tune seed-to-seed noise sd assumed by the posterior (score units).
        max_budget: N, the learning curve's cut-off.
        level: coverage of reported intervals.
        reached_ceiling_quantile: "target reached" is judged against this quantile of the
            posterior ceiling (0.8: a ceiling the posterior finds 80% likely not to exceed). Without
            a human score the ceiling is barely identified before the curve bends, and its median
            follows the prior's shape: on the demo it put half the gain at 0.22 accuracy after 100
            labels of a curve that reaches 0.78. 0.5 = the median (the pre-replay judgement).
    """

    policy: PolicySettings = field(default_factory=PolicySettings)
    curve_model: str = DEFAULT_CURVE_MODEL
    seed_noise: float = DEFAULT_SEED_NOISE
    max_budget: int = MAX_BUDGET
    level: float = 0.8
    reached_ceiling_quantile: float = 0.8


@dataclass(frozen=True)
class StepInputs:
    """What the loop knows at the end of an iteration's measurements.

    Attributes:
        labeled: labeled training items (the low-confidence batch included; eval items not).
        lowconf_total: size of the low-confidence batch (0 = not chosen yet).
        lowconf_labeled: labeled items of that batch.
        coslow: CoS-Low of the labeled batch, ``None`` before it is computed.
        measured: ``{labels: score}`` of fine-tunes on the eval split (``0`` = zero-shot).
        n_eval: eval-split size (binomial noise of each score), ``None`` if unknown.
        human_score: known ceiling, if any.
    """

    labeled: int
    lowconf_total: int = 32
    lowconf_labeled: int = 32
    coslow: float | None = None
    measured: Mapping[int, float] = field(default_factory=dict)
    n_eval: int | None = None
    human_score: float | None = None

    def __post_init__(self) -> None:
        if self.labeled < 0 or self.lowconf_labeled < 0 or self.lowconf_total < 0:
            raise DataError("labeled counts must be >= 0")
        for b, s in self.measured.items():
            if isinstance(b, bool) or int(b) != b or b < 0:
                raise DataError(f"measured budget {b!r}: must be a non-negative integer number of labels")
            if not (isinstance(s, (int, float)) and math.isfinite(s) and 0.0 <= s <= 1.0):
                raise DataError(f"measured score at {b} labels: {s!r} is not a score in [0, 1]")
        if self.n_eval is not None and self.n_eval < 1:
            raise DataError(f"n_eval must be a positive integer, got {self.n_eval}")


@dataclass(frozen=True)
class StepOutcome:
    """What :func:`step` returns: the assessment (``None`` before CoS-Low), the state and the decision."""

    assessment: Assessment | None
    state: LoopState
    decision: Decision
    settings: StepSettings

    @property
    def assessed(self) -> Assessment:
        """The assessment of a step given a CoS-Low (:class:`DataError` for a step before one)."""
        if self.assessment is None:
            raise DataError("no assessment: the step was given no CoS-Low")
        return self.assessment

    def summary(self) -> dict:
        """JSON-ready record of the step (assessment, probability within the cap, decision)."""
        return {
            "assessment": self.assessment.as_dict() if self.assessment else None,
            "p_within_cap": self.state.p_within_cap,
            "label_cap": self.settings.policy.label_cap,
            "curve_model": self.settings.curve_model,
            "decision": self.decision.as_dict(),
        }


def step(inputs: StepInputs, calibration: Calibration | None, settings: StepSettings | None = None) -> StepOutcome:
    """Assess the curve and decide what the loop does next.

    Args:
        inputs: labeled counts, CoS-Low and measured scores.
        calibration: the model family's calibration (needed once ``inputs.coslow`` is set).
        settings: policy and posterior settings.

    Returns:
        A :class:`StepOutcome`; ``outcome.decision.action`` is ``"request_labels"``,
        ``"finetune"`` or ``"stop"``.
    """
    st = settings or StepSettings()
    pol = st.policy
    assessment = None
    p_in, p_reached = None, {}
    if inputs.coslow is not None:
        if calibration is None:
            raise DataError("a calibration is needed to turn CoS-Low into a prediction")
        targets = tuple(dict.fromkeys((*pol.targets, *(() if pol.absolute_target else (pol.primary_target,)))))
        assessment = assess(
            inputs.coslow,
            calibration,
            inputs.measured,
            n_eval=inputs.n_eval,
            targets=targets,
            max_budget=st.max_budget,
            human_score=inputs.human_score,
            level=st.level,
            curve_model=st.curve_model,
            seed_noise=st.seed_noise,
        )
        post = assessment.posterior
        if post is not None:
            budgets = [int(b) for b in inputs.measured if b > 0]
            p_in, *p_budgets = post.reach_probabilities(
                pol.primary_target, [pol.label_cap, *budgets], pol.absolute_target
            )
            p_reached = dict(zip(budgets, p_budgets))
    need = None
    if assessment is not None:
        if pol.absolute_target and assessment.posterior is not None:
            need = assessment.posterior.labels_needed(pol.primary_target, absolute=True, level=st.level)
        elif not pol.absolute_target:
            need = assessment.need(pol.primary_target)
    state = LoopState(
        labeled_count=inputs.labeled,
        low_conf_batch_complete=inputs.lowconf_total > 0 and inputs.lowconf_labeled >= inputs.lowconf_total,
        low_conf_labeled=inputs.lowconf_labeled,
        need=need,
        coslow=inputs.coslow,
        finetuned={int(b): float(s) for b, s in inputs.measured.items() if b > 0},
        zero_shot=assessment.zero_shot if assessment else inputs.measured.get(0),
        ceiling=_judging_ceiling(assessment, st.reached_ceiling_quantile) if assessment else inputs.human_score,
        p_within_cap=p_in,
        p_reached=p_reached,
    )
    return StepOutcome(assessment, state, decide(state, pol), st)


def _judging_ceiling(assessment: Assessment, quantile: float) -> float | None:
    post = assessment.posterior
    if post is None:
        return assessment.ceiling
    return post.h_summary(level=2 * quantile - 1)["hi"] if quantile > 0.5 else assessment.ceiling


@dataclass(frozen=True)
class RequestPlan:
    """The items to put at the top of the annotators' queue, in order, and their priority base.

    Attributes:
        ids: item ids in the order they should be labeled.
        priority_base: priority of the first item; later ones get ``priority_base - k``. It grows
            with the labeled count so a new request always sits above every earlier one.
    """

    ids: list[str]
    priority_base: int


def plan_request(
    decision: Decision,
    lowconf_ids: Sequence[str],
    eval_ids: Sequence[str],
    unlabeled_pool_ids: Iterable[str],
    labeled_ids: set[str],
    seed: int = 0,
) -> RequestPlan:
    """Which items to request for ``decision`` and with what priority.

    Order: missing low-confidence items, then missing eval items, then a seeded random draw of
    pool items (the learning curve is measured on random subsets). Pool items are only drawn once
    the low-confidence batch is complete.
    """
    n = decision.n_labels
    if decision.action != "request_labels" or n <= 0:
        return RequestPlan([], 0)
    missing_low = [i for i in lowconf_ids if i not in labeled_ids]
    missing_eval = [i for i in eval_ids if i not in labeled_ids]
    reserved = set(lowconf_ids) | set(eval_ids)
    pool = [i for i in unlabeled_pool_ids if i not in labeled_ids and i not in reserved]
    wanted = missing_low + missing_eval
    wanted += next_batch(pool, max(n - len(wanted), 0) if not missing_low else 0, seed=seed)
    return RequestPlan(wanted, batch_base(len(labeled_ids), len(wanted)))


def settings_for(project, n_lowconf: int) -> StepSettings:
    """:class:`StepSettings` of a :class:`dataeff.project.ProjectConfig` (its targets, cap, grid, batch bounds)."""
    policy = PolicySettings(
        targets=project.targets,
        primary_target=project.primary_target,
        label_cap=project.label_cap,
        batch_size_min=project.batch_min,
        batch_size_max=project.batch_max,
        low_conf_batch_size=max(n_lowconf, 1),
        budget_grid=project.budgets,
    )
    return StepSettings(policy=policy, max_budget=project.max_budget)


def needs_table(outcome: StepOutcome) -> dict:
    """``{"0.8": {"median", "lo", "hi", "p_never"}}`` of the outcome's assessment (empty before CoS-Low)."""
    if outcome.assessment is None:
        return {}
    return {
        target_key(t): {k: v for k, v in n.as_dict().items() if k in ("median", "lo", "hi", "p_never")}
        for t, n in outcome.assessment.needs.items()
    }


__all__ = [
    "RequestPlan",
    "StepInputs",
    "StepOutcome",
    "StepSettings",
    "needs_table",
    "plan_request",
    "settings_for",
    "step",
]
