"""Combine the CoS-Low prediction with the fine-tunes measured so far into one assessment.

Pure: the loop hands in numbers it read from MLflow and gets back what to report and decide on.
Without a measured zero-shot score the paper's prediction stands alone; with one, the curve
posterior of :mod:`dataeff.posterior` starts at the prediction (prior) and bends toward every
measured ``(labels, score)`` point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dataeff.calibration import Calibration
from dataeff.defaults import TARGETS
from dataeff.efficiency import LabelsNeeded, Prediction, target_key
from dataeff.errors import DataError
from dataeff.posterior import CurvePosterior, Observation, PosteriorSettings, fit_posterior
from dataeff.posterior_flex import FlexPosterior, FlexSettings, fit_flex_posterior

#: Curve models of the posterior, by name: ``"beta"`` (default; S-shaped, can saturate early or
#: rise late, seed noise in the likelihood) and ``"xp"`` (the paper's ``x^p`` shape, the
#: posterior before the replay study; kept as the baseline of ``dataeff bench replay``).
CURVE_MODELS: dict[str, Callable[..., CurvePosterior | FlexPosterior]] = {
    "beta": lambda prior_auc, prior_sd, s0, points, human_score, level, noise, n_max: fit_flex_posterior(
        prior_auc, prior_sd, s0, points, human_score, FlexSettings(level=level, seed_noise_sd=noise, max_budget=n_max)
    ),
    "xp": lambda prior_auc, prior_sd, s0, points, human_score, level, noise, n_max: fit_posterior(
        prior_auc, prior_sd, s0, points, human_score, PosteriorSettings(level=level, max_budget=n_max)
    ),
}
DEFAULT_CURVE_MODEL = "beta"
#: Fine-tune seed-to-seed noise assumed on top of the eval set's binomial noise (score units):
#: the pooled residual of the 100 published curves around their monotone fit (0.030).
DEFAULT_SEED_NOISE = 0.03


@dataclass
class Assessment:
    """What the loop knows about the task's learning curve now.

    Attributes:
        prediction: the paper's prediction from CoS-Low (prior).
        posterior: the curve posterior, or ``None`` before the zero-shot score is measured.
        needs: labels needed per target (posterior when available, else the prediction).
        zero_shot: measured zero-shot score, if any.
        ceiling: the ceiling assumed: the posterior median of ``h = max(human score, top)`` (the
            human score alone before the zero-shot is measured), if any.
        measured: ``{labels: score}`` of the fine-tunes (zero-shot included).
    """

    prediction: Prediction
    posterior: CurvePosterior | FlexPosterior | None
    needs: dict[float, LabelsNeeded]
    zero_shot: float | None
    ceiling: float | None
    measured: dict[int, float]

    @property
    def source(self) -> str:
        return "posterior" if self.posterior is not None else "prediction"

    def need(self, target: float) -> LabelsNeeded:
        if target in self.needs:
            return self.needs[target]
        return self.posterior.need(target) if self.posterior is not None else self.prediction.need(target)

    def as_dict(self) -> dict:
        out = {
            "source": self.source,
            "prediction": self.prediction.as_dict(),
            "labels_needed": {target_key(t): n.as_dict() for t, n in self.needs.items()},
            "zero_shot": self.zero_shot,
            "ceiling": self.ceiling,
            "measured": {str(b): s for b, s in sorted(self.measured.items())},
        }
        if self.posterior is not None:
            out["posterior"] = {"auc": self.posterior.auc_summary(), "h": self.posterior.h_summary()}
        return out


def assess(
    coslow: float,
    calibration: Calibration,
    measured: Mapping[int, float],
    *,
    n_eval: int | None = None,
    targets: Sequence[float] = TARGETS,
    max_budget: int = 5000,
    human_score: float | None = None,
    level: float = 0.8,
    curve_model: str = DEFAULT_CURVE_MODEL,
    seed_noise: float = DEFAULT_SEED_NOISE,
) -> Assessment:
    """Prediction from CoS-Low, refined by measured fine-tunes when the zero-shot score is known.

    Args:
        coslow: measured CoS-Low.
        calibration: the model family's calibration (its prediction sd is the prior's sd).
        measured: ``{labels: score}`` of fine-tunes on the held-out split; ``0`` = zero-shot.
        n_eval: size of the held-out split (sets the binomial noise of each point).
        targets: normalised targets to report.
        max_budget: N, the curve's cut-off.
        human_score: known ceiling, if any.
        level: interval coverage.
        curve_model: a key of :data:`CURVE_MODELS`.
        seed_noise: fine-tune seed-to-seed noise sd (score units), used by the ``"beta"`` model.
    """
    if curve_model not in CURVE_MODELS:
        raise DataError(f"unknown curve model {curve_model!r}; choose one of {sorted(CURVE_MODELS)}")
    calibration = calibration.at_cutoff(max_budget)  # a calibration measured up to fewer labels, on this axis
    prediction = calibration.predict(coslow, targets=targets, max_budget=max_budget, level=level)
    measured = {int(b): float(s) for b, s in measured.items()}
    s0 = measured.get(0)
    if s0 is None or s0 >= 1.0:
        needs = {t: prediction.need(t) for t in targets}
        return Assessment(prediction, None, needs, s0, human_score, measured)
    points = [Observation(n=b, score=s, n_eval=n_eval) for b, s in sorted(measured.items()) if b > 0]
    posterior = CURVE_MODELS[curve_model](
        prediction.auc, calibration.predict_sd(coslow), s0, points, human_score, level, seed_noise, max_budget
    )
    needs = {t: posterior.labels_needed(t) for t in targets}
    # the paper's ceiling is max(human score, best score): the posterior's h covers both cases
    ceiling = posterior.h_summary()["median"]
    return Assessment(prediction, posterior, needs, s0, ceiling, measured)
