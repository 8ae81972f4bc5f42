"""Combine the CoS-Low prediction with the fine-tunes measured so far into one assessment.

Pure: the loop hands in numbers it read from MLflow and gets back what to report and decide on.
Without a measured zero-shot score the paper's prediction stands alone; with one, the curve
posterior of :mod:`dataeff.posterior` starts at the prediction (prior) and bends toward every
measured ``(labels, score)`` point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from dataeff.calibration import Calibration
from dataeff.efficiency import LabelsNeeded, Prediction, target_key
from dataeff.posterior import CurvePosterior, Observation, PosteriorSettings, fit_posterior


@dataclass
class Assessment:
    """What the loop knows about the task's learning curve now.

    Attributes:
        prediction: the paper's prediction from CoS-Low (prior).
        posterior: the curve posterior, or ``None`` before the zero-shot score is measured.
        needs: labels needed per target (posterior when available, else the prediction).
        zero_shot: measured zero-shot score, if any.
        ceiling: the ceiling assumed (human score, else the posterior's median ``h``), if any.
        measured: ``{labels: score}`` of the fine-tunes (zero-shot included).
    """

    prediction: Prediction
    posterior: CurvePosterior | None
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
    targets: Sequence[float] = (0.5, 0.8, 0.9),
    max_budget: int = 5000,
    human_score: float | None = None,
    level: float = 0.8,
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
    """
    prediction = calibration.predict(coslow, targets=targets, max_budget=max_budget, level=level)
    measured = {int(b): float(s) for b, s in measured.items()}
    s0 = measured.get(0)
    if s0 is None or s0 >= 1.0:
        needs = {t: prediction.need(t) for t in targets}
        return Assessment(prediction, None, needs, s0, human_score, measured)
    points = [Observation(n=b, score=s, n_eval=n_eval) for b, s in sorted(measured.items()) if b > 0]
    posterior = fit_posterior(
        prior_auc=prediction.auc,
        prior_sd=calibration.predict_sd(coslow),
        s0=s0,
        points=points,
        human_score=human_score,
        settings=PosteriorSettings(level=level),
    )
    needs = {t: posterior.labels_needed(t) for t in targets}
    ceiling = human_score if human_score is not None else posterior.h_summary()["median"]
    return Assessment(prediction, posterior, needs, s0, ceiling, measured)
