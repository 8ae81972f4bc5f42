"""User-facing defaults that several parts of dataeff share, each with its one home here.

The CLI, the project config, the policy and the plots read these; a module-specific default
(e.g. :data:`dataeff.efficiency.BUDGET_GRID`, :data:`dataeff.models.DEFAULT_DTYPE`) stays with
its module.
"""

from __future__ import annotations

TARGETS: tuple[float, ...] = (0.5, 0.8, 0.9)
"""Normalised targets reported: shares of the way from the zero-shot score to the ceiling."""
PRIMARY_TARGET: float = 0.9
"""The target the loop's stop rule is about (a project's default)."""
LABEL_CAP: int = 1000
"""The most training labels a team gives unless its project says otherwise."""
CALIBRATION: str = "llama-3.1-8b-instruct"
"""Calibration used when a project names none (the paper's, read off its figure)."""
