"""User-facing defaults that several parts of dataeff share, each with its one home here.

The CLI, the project config, the policy and the plots read these; a module-specific default
(e.g. :data:`dataeff.efficiency.BUDGET_GRID`, :data:`dataeff.models.DEFAULT_DTYPE`) stays with
its module.
"""

from __future__ import annotations

from pathlib import Path

TARGETS: tuple[float, ...] = (0.5, 0.8, 0.9)
"""Normalised targets reported: shares of the way from the zero-shot score to the ceiling."""
PRIMARY_TARGET: float = 0.9
"""The target the loop's stop rule is about (a project's default)."""
LABEL_CAP: int = 1000
"""The most training labels a team gives unless its project says otherwise."""
CALIBRATION: str = "llama-3.1-8b-instruct"
"""Calibration used when a project names none and its model has no fitted one (the paper's, read off its figure)."""
MODEL_CALIBRATIONS: dict[str, str] = {"smollm2-135m": "smollm2-135m-instruct-lora"}
"""Fitted calibration of a model family (``dataeff study``), by a lower-case part of the model's name or path."""
GRAM_STORAGES: tuple[str, ...] = ("auto", "one-batch", "memory", "host", "disk", "passes")
"""Where CoS-Low keeps per-example gradient rows (:func:`dataeff.gradients.plan_gram`); all are exact."""


def calibration_for(model: str) -> str:
    """The calibration a project of ``model`` uses unless it names one.

    The fitted calibration of the model family when dataeff ships one (the embedded default
    ``"smollm2"`` and any SmolLM2-135M path: ``"smollm2-135m-instruct-lora"``), else :data:`CALIBRATION`.

    Examples:
        >>> calibration_for("smollm2")
        'smollm2-135m-instruct-lora'
        >>> calibration_for("/models/Llama-3.1-8B-Instruct")
        'llama-3.1-8b-instruct'
    """
    name = "smollm2-135m" if str(model).strip().lower() == "smollm2" else str(model).lower()
    shipped = Path(__file__).with_name("calibrations")
    for part, family in MODEL_CALIBRATIONS.items():
        if part in name and (shipped / f"{family}.json").is_file():
            return family
    return CALIBRATION
