"""Calibration per model family: ``AUC' = coef * CoS-Low + intercept`` (method.md section 3).

A :class:`Calibration` is either fitted from tasks with measured curves (:func:`fit_calibration`,
ordinary least squares, leave-one-task-out errors) or one of the :data:`BUILTIN_CALIBRATIONS`
read from the reference repository's figure. Its :meth:`Calibration.predict_auc` gives AUC with a
prediction interval:

* fitted from data: the OLS prediction interval
  ``AUC' +- t_{n-2} * s * sqrt(1 + 1/n + (c - mean c)^2 / Sxx)``, ``s`` the residual standard
  deviation (n - 2 degrees of freedom);
* built-in (no data): a normal interval with sd :data:`BUILTIN_AUC_SD` = 0.086 * sqrt(pi / 2)
  ~ 0.108, i.e. the paper's 8.6% error read as a mean absolute error of normally distributed
  errors (``MAE = sd * sqrt(2 / pi)``). This is an assumption, not a number from the paper.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from numbers import Real
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import LeaveOneOut, cross_val_predict

from dataeff.defaults import TARGETS
from dataeff.efficiency import MAX_BUDGET, Prediction, clip_auc, predict
from dataeff.errors import DataError

#: The paper's reported error of predicted data efficiency (8.6%), read as a mean absolute error.
PAPER_AUC_MAE = 0.086
#: SD of AUC' used for built-in calibrations: the paper's MAE converted for normal errors.
BUILTIN_AUC_SD = PAPER_AUC_MAE * math.sqrt(math.pi / 2)
EXTRAPOLATION_SHORTFALL: float = 0.59
"""How far short of the "flat after N" guess a curve's AUC on a longer axis N' falls, per unit of the
axis that was not measured (``w = 1 - log N / log N'``): ``AUC' = 1 - (1 - AUC) / r - 0.59 w``. On the
paper's published curves (95-99 curves per pair) the measured shortfall / w is 0.55-0.61 for every
pair of N in {100, 200, 500, 1000} and N' in {633, 1000, 5000}: the flat guess is never too low and on
average 0.10 (200 -> 633) to 0.27 (100 -> 5000) too high. tests/test_calibration.py re-measures it."""
EXTRAPOLATION_SD: float = 0.23
"""sd of a curve's AUC on the longer axis around that corrected guess, per ``sqrt(w)``: ``0.23 sqrt(w)``
(measured 0.21-0.27 on the same pairs: 0.09 for 200 -> 633, 0.15 for 200 -> 5000). Added in quadrature to
the calibration's own sd by :meth:`Calibration.predict_sd`."""
FORMAT = "dataeff.calibration/1"
FIT_KINDS = ("full", "lora")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Calibration:
    """Linear map from CoS-Low to AUC for one model family, with its provenance and errors.

    Attributes:
        family: model family name (e.g. ``"llama-3.1-8b-instruct"``).
        coef, intercept: ``AUC' = coef * coslow + intercept``.
        n_tasks: number of tasks fitted on (``None`` for a built-in read off a figure).
        residual_std: OLS residual sd ``sqrt(SSR / (n - 2))`` (AUC units), ``None`` for built-ins.
        loo_mae: leave-one-task-out mean |AUC' - AUC|.
        loo_relative_error: leave-one-task-out mean |AUC' - AUC| / AUC.
        baseline_loo_mae: leave-one-out MAE of predicting the mean AUC of the other tasks.
        source: where the numbers come from (file, figure, command) - free text.
        fit_kind: ``"full"`` (curves from full fine-tuning) or ``"lora"`` (from LoRA fine-tunes).
        created_at: ISO-8601 UTC time of the fit.
        tasks: task names fitted on.
        aliases: other names that select this calibration in :func:`get_calibration`.
        coslow_mean, coslow_sxx: mean and sum of squared deviations of the fitted CoS-Low values
            (needed for the OLS prediction interval).
        default_sd: sd of AUC' used when there is no fit data (built-ins).
        coef_interval, intercept_interval: 95% OLS confidence intervals of the fitted coefficients.
        dtype: arithmetic dtype the CoS-Low values were computed in (``"fp32"``, ``"fp16"``,
            ``"bf16"``; ``None``: unknown). An estimate in another dtype is warned about (the same
            batch gave 0.327 in fp32 and 0.244 in bf16 on SmolLM2).
        provenance: how the fitted curves and CoS-Low values were made: model, device, LoRA and
            fine-tune settings, budget grid, seeds, eval size, draws, command, date.
        max_budget: N of the size axis the fitted AUCs were measured on (``None``: the paper's
            :data:`dataeff.efficiency.MAX_BUDGET` = 5000). A study on a CPU grid up to 200 labels
            has N = 200; :meth:`at_cutoff` carries it to another N.
        extrapolation_sd: sd of AUC' that comes from the part of the axis the fitted curves did not
            measure (set by :meth:`at_cutoff`: :data:`EXTRAPOLATION_SD` ``* sqrt(w)``); ``None``: none.
    """

    family: str
    coef: float
    intercept: float
    n_tasks: int | None = None
    residual_std: float | None = None
    loo_mae: float | None = None
    loo_relative_error: float | None = None
    baseline_loo_mae: float | None = None
    source: str = ""
    fit_kind: str = "full"
    created_at: str = field(default_factory=_now)
    tasks: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    coslow_mean: float | None = None
    coslow_sxx: float | None = None
    default_sd: float | None = None
    coef_interval: tuple[float, float] | None = None
    intercept_interval: tuple[float, float] | None = None
    dtype: str | None = None
    provenance: dict = field(default_factory=dict)
    max_budget: int | None = None
    extrapolation_sd: float | None = None

    def __post_init__(self) -> None:
        for name in ("coef_interval", "intercept_interval"):  # JSON gives lists back
            if getattr(self, name) is not None:
                setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.fit_kind not in FIT_KINDS:
            raise DataError(f"calibration {self.family!r}: fit_kind must be one of {FIT_KINDS}, got {self.fit_kind!r}")
        for name in ("coef", "intercept"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise DataError(f"calibration {self.family!r}: {name} must be a finite number, got {value!r}")

    @property
    def cutoff(self) -> int:
        """N of this calibration's AUC axis (:attr:`max_budget`, else the paper's 5000)."""
        return int(self.max_budget or MAX_BUDGET)

    def at_cutoff(self, max_budget: int) -> Calibration:
        """This calibration on another AUC axis: predicts the AUC a curve has up to ``max_budget`` labels.

        A calibration measured up to N (its :attr:`cutoff`) did not see the curve beyond N. On the
        larger axis N' the old axis is stretched by ``r = log N' / log N``; a curve that stayed at its
        best score after N would have ``AUC' = 1 - (1 - AUC) / r``, but real curves keep rising: on the
        paper's published curves that guess is never too low and on average
        :data:`EXTRAPOLATION_SHORTFALL` ``* w`` too high (``w = 1 - 1/r``, the unmeasured share of the
        axis). So ``AUC' = 1 - (1 - AUC) / r - 0.59 w``: still linear in AUC, so the map from CoS-Low
        stays linear (``coef / r``, ``intercept / r + 0.41 w``); the fit's sd and errors scale by
        ``1 / r`` and :attr:`extrapolation_sd` (:data:`EXTRAPOLATION_SD` ``* sqrt(w)``) adds what the
        unmeasured part leaves open. (Before 2026-11-25 dataeff used the flat guess with the sd
        shrunk by ``1 / r``: on the demo it put the AUC at 0.62 +- 0.06 for a task whose curve is
        0.12, 0.12, 0.22, 0.50, 0.68, 0.78 at 0-633 labels, and stopped the loop at 100 labels.)
        The curve posterior's measured fine-tunes correct the rest as points arrive.

        Args:
            max_budget: N' (>= this calibration's N; the same N returns ``self``).

        Raises:
            DataError: ``max_budget`` below this calibration's N (the curve after N' is unknown).
        """
        n_own, n_new = self.cutoff, int(max_budget)
        if n_new == n_own:
            return self
        if n_new < n_own:
            raise DataError(
                f"calibration {self.family!r} is on an axis up to {n_own} labels; it cannot predict the AUC up to "
                f"{n_new} (set the project's max_budget to {n_own} or more, or use a calibration measured up to {n_new})"
            )
        r = math.log2(n_new) / math.log2(n_own)

        def scale(v: float | None) -> float | None:
            return None if v is None else v / r

        w = 1.0 - 1.0 / r
        shift = (1.0 - EXTRAPOLATION_SHORTFALL) * w
        ci, ii = self.coef_interval, self.intercept_interval
        extra = math.hypot(scale(self.extrapolation_sd) or 0.0, EXTRAPOLATION_SD * math.sqrt(w))
        return replace(
            self,
            coef=self.coef / r,
            intercept=self.intercept / r + shift,
            residual_std=scale(self.residual_std),
            loo_mae=scale(self.loo_mae),
            baseline_loo_mae=scale(self.baseline_loo_mae),
            loo_relative_error=None,
            default_sd=scale(self.default_sd if self.default_sd is not None else BUILTIN_AUC_SD),
            coef_interval=None if ci is None else (ci[0] / r, ci[1] / r),
            intercept_interval=None if ii is None else (ii[0] / r + shift, ii[1] / r + shift),
            provenance={**self.provenance, "rescaled_from_max_budget": n_own},
            max_budget=n_new,
            extrapolation_sd=extra,
        )

    def describe(self) -> str:
        """One line a reader can judge the calibration by: what it was fitted on and how well.

        Examples:
            >>> Calibration("x", 0.5, 0.3, source="figure 3").describe()
            'x: AUC = 0.500 * CoS-Low + 0.300 (figure 3; not fitted here, no error known)'
        """
        head = f"{self.family}: AUC = {self.coef:.3f} * CoS-Low + {self.intercept:.3f}"
        if self.n_tasks is None or self.loo_mae is None:
            return f"{head} ({self.source or 'built in'}; not fitted here, no error known)"
        base = f" vs {self.baseline_loo_mae:.3f} predicting the mean" if self.baseline_loo_mae is not None else ""
        axis = f"N = {self.cutoff}, " + (f"{self.dtype}, " if self.dtype else "")
        return f"{head} ({self.fit_kind} curves of {self.n_tasks} tasks, {axis}leave-one-task-out MAE {self.loo_mae:.3f}{base})"

    @property
    def fitted(self) -> bool:
        """True when the calibration carries what an OLS prediction interval needs."""
        return self._fit_stats() is not None

    def _fit_stats(self) -> tuple[int, float, float, float] | None:
        """``(n_tasks, residual_std, coslow_mean, coslow_sxx)`` when :attr:`fitted`, else ``None``."""
        n, s, mean, sxx = self.n_tasks, self.residual_std, self.coslow_mean, self.coslow_sxx
        if n is None or n < 3 or s is None or mean is None or not sxx:
            return None
        return n, s, mean, sxx

    def predict_sd(self, coslow: float) -> float:
        """Standard error of a new task's AUC at ``coslow`` (AUC units).

        Fitted: ``s * sqrt(1 + 1/n + (coslow - mean)^2 / Sxx)``. Built-in: ``default_sd``
        (or :data:`BUILTIN_AUC_SD`). Carried to a longer axis (:meth:`at_cutoff`): combined in
        quadrature with :attr:`extrapolation_sd`.
        """
        fit = self._fit_stats()
        if fit is not None:
            n, s, mean, sxx = fit
            own = s * math.sqrt(1 + 1 / n + (coslow - mean) ** 2 / sxx)
        else:
            own = self.default_sd if self.default_sd is not None else BUILTIN_AUC_SD
        return float(math.hypot(own, self.extrapolation_sd or 0.0))

    def predict_auc(self, coslow: float, level: float = 0.8) -> tuple[float, float, float]:
        """Predicted AUC of a task with this CoS-Low and its prediction interval.

        Args:
            coslow: measured CoS-Low in [-1, 1].
            level: two-sided coverage of the interval (default 0.8).

        Returns:
            ``(auc, lo, hi)``, all clipped into :data:`dataeff.efficiency.AUC_CLIP`. The interval
            is Student-t with n - 2 degrees of freedom when fitted from data, normal otherwise.
        """
        if not 0 < level < 1:
            raise DataError(f"level must be in (0, 1), got {level!r}")
        if isinstance(coslow, bool) or not isinstance(coslow, Real) or not -1 <= coslow <= 1:
            raise DataError(f"CoS-Low must be a number in [-1, 1], got {coslow!r}")
        raw = self.coef * coslow + self.intercept
        q = 0.5 + level / 2
        z = stats.t.ppf(q, self.n_tasks - 2) if self.fitted else stats.norm.ppf(q)
        half = float(z) * self.predict_sd(coslow)
        return clip_auc(raw), clip_auc(raw - half), clip_auc(raw + half)

    def predict(
        self,
        coslow: float,
        targets: Sequence[float] = TARGETS,
        max_budget: int = MAX_BUDGET,
        level: float = 0.8,
    ) -> Prediction:
        """:func:`dataeff.efficiency.predict` with this calibration (on the ``max_budget`` axis, see
        :meth:`at_cutoff`) and its AUC interval."""
        if max_budget != self.cutoff:
            return self.at_cutoff(max_budget).predict(coslow, targets, max_budget, level)
        _, lo, hi = self.predict_auc(coslow, level)
        pred = predict(coslow, self.coef, self.intercept, targets, max_budget, auc_interval=(lo, hi))
        pred.extra.update(
            {
                "calibration": self.family,
                "calibration_fit_kind": self.fit_kind,
                "interval_level": level,
                "auc_sd": self.predict_sd(coslow),
            }
        )
        return pred

    # ----------------------------------------------------------------- persistence

    def as_dict(self) -> dict:
        """JSON-ready dict of every field plus ``"format": "dataeff.calibration/1"``."""
        out = {"format": FORMAT, **asdict(self)}
        for name in ("coef_interval", "intercept_interval"):
            if out[name] is not None:
                out[name] = list(out[name])  # as JSON stores it
        return out

    def to_json(self) -> str:
        """JSON text of :meth:`as_dict`."""
        return json.dumps(self.as_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = "calibration JSON") -> Calibration:
        """Parse :meth:`to_json` output. Raises :class:`DataError` naming ``where`` on bad input."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f'{where}: not a dataeff calibration (expected "format": "{FORMAT}")')
        data.pop("format")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"{where}: unknown fields {unknown}; known fields: {sorted(known)}")
        missing = [k for k in ("family", "coef", "intercept") if k not in data]
        if missing:
            raise DataError(f"{where}: missing fields {missing}")
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (parents created). Returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration saved with :meth:`save`."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"{path}: cannot read calibration ({exc.strerror or exc})") from None
        return cls.from_json(text, where=str(path))


# --------------------------------------------------------------------------- fitting


def _check_rows(rows: Iterable[Sequence]) -> tuple[list[str], np.ndarray, np.ndarray]:
    tasks: list[str] = []
    cs: list[float] = []
    aucs: list[float] = []
    for i, row in enumerate(rows):
        try:
            task, coslow, auc = row
        except (TypeError, ValueError):
            raise DataError(f"row {i}: expected (task, coslow, auc), got {row!r}") from None
        task = str(task)
        for name, value in (("coslow", coslow), ("auc", auc)):
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise DataError(f"row {i} (task {task!r}): {name} must be a finite number, got {value!r}")
        if not -1 <= coslow <= 1:
            raise DataError(f"row {i} (task {task!r}): coslow must be in [-1, 1], got {coslow}")
        if not 0 < auc <= 1:
            raise DataError(f"row {i} (task {task!r}): auc must be in (0, 1], got {auc}")
        if task in tasks:
            raise DataError(f"row {i}: task {task!r} appears twice; keep one row per task")
        tasks.append(task)
        cs.append(float(coslow))
        aucs.append(float(auc))
    return tasks, np.array(cs), np.array(aucs)


def fit_calibration(
    rows: Iterable[Sequence],
    family: str,
    *,
    source: str = "",
    fit_kind: str = "full",
    aliases: Sequence[str] = (),
    dtype: str | None = None,
    provenance: dict | None = None,
    max_budget: int | None = None,
) -> Calibration:
    """Fit ``AUC = coef * CoS-Low + intercept`` by least squares, with leave-one-task-out errors.

    Args:
        rows: ``(task, coslow, auc)`` per task; at least 3 distinct tasks, finite numbers,
            CoS-Low in [-1, 1] and AUC in (0, 1].
        family: model family the rows were measured on.
        source: provenance text stored with the calibration.
        fit_kind: ``"full"`` or ``"lora"`` (how the AUC curves were fine-tuned).
        aliases: other names for :func:`get_calibration`.
        dtype: arithmetic dtype of the CoS-Low values (recorded; estimates in another dtype warn).
        provenance: free-form record of how the rows were measured (model, settings, grid, seeds).
        max_budget: N of the size axis the AUCs were measured on (``None``: the paper's 5000).

    Returns:
        A fitted :class:`Calibration` with ``residual_std``, ``loo_mae``,
        ``loo_relative_error`` and ``baseline_loo_mae`` (predict-the-mean) set.

    Raises:
        DataError: fewer than 3 tasks, a duplicate task, a NaN/out-of-range value, or all CoS-Low
            values equal (the slope is undefined).
    """
    tasks, cs, aucs = _check_rows(rows)
    n = len(tasks)
    if n < 3:
        raise DataError(f"calibration {family!r}: need at least 3 tasks with CoS-Low and AUC, got {n}")
    sxx = float(np.sum((cs - cs.mean()) ** 2))
    if sxx <= 1e-12:
        raise DataError(f"calibration {family!r}: all CoS-Low values are equal; the slope cannot be fitted")
    X = cs.reshape(-1, 1)
    model = LinearRegression().fit(X, aucs)
    residuals = aucs - model.predict(X)
    loo = LeaveOneOut()
    loo_pred = cross_val_predict(LinearRegression(), X, aucs, cv=loo)
    base_pred = cross_val_predict(DummyRegressor(strategy="mean"), X, aucs, cv=loo)
    s = float(math.sqrt(np.sum(residuals**2) / (n - 2)))
    t = float(stats.t.ppf(0.975, n - 2))
    se_coef = s / math.sqrt(sxx)
    se_int = s * math.sqrt(1.0 / n + float(cs.mean()) ** 2 / sxx)
    coef, intercept = float(model.coef_[0]), float(model.intercept_)
    return Calibration(
        family=family,
        coef=coef,
        intercept=intercept,
        n_tasks=n,
        residual_std=s,
        loo_mae=float(np.mean(np.abs(loo_pred - aucs))),
        loo_relative_error=float(np.mean(np.abs(loo_pred - aucs) / aucs)),
        baseline_loo_mae=float(np.mean(np.abs(base_pred - aucs))),
        source=source,
        fit_kind=fit_kind,
        tasks=tasks,
        aliases=list(aliases),
        coslow_mean=float(cs.mean()),
        coslow_sxx=sxx,
        coef_interval=(coef - t * se_coef, coef + t * se_coef),
        intercept_interval=(intercept - t * se_int, intercept + t * se_int),
        dtype=dtype,
        provenance=dict(provenance or {}),
        max_budget=max_budget,
    )


def dtype_warning(calibration: Calibration, dtype: str | None) -> str | None:
    """A warning when an estimate's CoS-Low dtype differs from the one ``calibration`` was fitted in, else ``None``.

    Built-in calibrations read off the paper's figure record no dtype (``None``): no warning.
    """
    if calibration.dtype is None or dtype is None or dtype == calibration.dtype:
        return None
    return (
        f"CoS-Low was computed in {dtype} but calibration {calibration.family!r} was fitted on {calibration.dtype} "
        f"values; the dtype alone moves CoS-Low by more than the calibration's error (SmolLM2: fp32 0.39, bf16 0.29). "
        f"Load the model in {calibration.dtype}."
    )


def baseline_loo_mae(aucs: Sequence[float]) -> float:
    """Leave-one-out MAE of always predicting the mean AUC of the other tasks (the trivial baseline)."""
    y = np.asarray(aucs, dtype=np.float64)
    if y.ndim != 1 or len(y) < 2 or not np.all(np.isfinite(y)):
        raise DataError("need at least 2 finite AUC values for a leave-one-out baseline")
    pred = cross_val_predict(DummyRegressor(strategy="mean"), np.zeros((len(y), 1)), y, cv=LeaveOneOut())
    return float(np.mean(np.abs(pred - y)))


def read_pairs_csv(path: str | Path) -> list[tuple[str, float, float]]:
    """Read a CSV with a header ``task,coslow,auc`` (extra columns ignored) into rows.

    Raises:
        DataError: naming ``file:line`` for a missing column, a non-numeric value or an empty file.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(
            f"{path}: cannot open ({exc.strerror or exc}); give a CSV with columns task,coslow,auc"
        ) from None
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("task", "coslow", "auc") if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; the header must include task,coslow,auc")
        rows: list[tuple[str, float, float]] = []
        for raw in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            where = f"{path}:{reader.line_num}"
            if not row["task"]:
                raise DataError(f"{where}: empty task name")
            try:
                rows.append((row["task"], float(row["coslow"]), float(row["auc"])))
            except ValueError:
                raise DataError(
                    f"{where}: coslow and auc must be numbers, got {row['coslow']!r}, {row['auc']!r}"
                ) from None
    if not rows:
        raise DataError(f"{path}: no data rows")
    return rows


# --------------------------------------------------------------------------- built-ins

_FIGURE = (
    "read from the reference repository's figure plots/learned_coefficients.png "
    "(github r-three/dataefficiency); fitted there on 30 tasks with curves from FULL fine-tuning "
    "(lr 1e-5, 500 steps, effective batch 32). Interval: normal with sd "
    f"{BUILTIN_AUC_SD:.3f} = the paper's 8.6% error read as a mean absolute error. "
    "Curves from LoRA fine-tunes need their own calibration."
)

BUILTIN_CALIBRATIONS: dict[str, Calibration] = {
    c.family: c
    for c in (
        Calibration(
            "llama-3.1-8b-instruct",
            0.545,
            0.310,
            source=_FIGURE,
            fit_kind="full",
            created_at="2025-12-31",
            default_sd=BUILTIN_AUC_SD,
            aliases=["llama", "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B-Instruct"],
        ),
        Calibration(
            "mistral-7b-instruct-v0.3",
            0.797,
            0.357,
            source=_FIGURE,
            fit_kind="full",
            created_at="2025-12-31",
            default_sd=BUILTIN_AUC_SD,
            aliases=["mistral", "mistralai/Mistral-7B-Instruct-v0.3"],
        ),
        Calibration(
            "qwen2.5-14b-instruct",
            0.526,
            0.305,
            source=_FIGURE,
            fit_kind="full",
            created_at="2025-12-31",
            default_sd=BUILTIN_AUC_SD,
            aliases=["qwen", "Qwen/Qwen2.5-14B-Instruct"],
        ),
    )
}


PACKAGED_DIR = Path(__file__).with_name("calibrations")
"""Calibrations fitted by ``dataeff study`` and shipped with dataeff (one JSON file per family)."""


def builtin_calibrations(packaged_dir: Path | None = None) -> dict[str, Calibration]:
    """The paper's calibrations (read off its figure) plus every fitted one shipped in :data:`PACKAGED_DIR`.

    A shipped file whose family is also a figure-read one replaces it (a fit beats a reading).
    """
    found = dict(BUILTIN_CALIBRATIONS)
    folder = PACKAGED_DIR if packaged_dir is None else packaged_dir
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        cal = Calibration.load(path)
        found[cal.family] = cal
    return found


def get_calibration(name_or_path: str | Path, packaged_dir: Path | None = None) -> Calibration:
    """A built-in calibration by name or alias (case-insensitive; the shipped fitted ones included),
    or one saved as a JSON file.

    Raises:
        DataError: listing the known names when ``name_or_path`` is neither.
    """
    key = str(name_or_path).strip()
    known = builtin_calibrations(packaged_dir)
    for cal in known.values():
        if key.lower() in [cal.family.lower()] + [a.lower() for a in cal.aliases]:
            return cal
    path = Path(key)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise DataError(f"calibration file {path} not found; fit one with fit_calibration() and save() it")
        return Calibration.load(path)
    names = sorted(c.family for c in known.values())
    aliases = sorted(a for c in known.values() for a in c.aliases)
    raise DataError(
        f"unknown calibration {key!r}; use one of {names} (aliases: {aliases}) or the path of a calibration JSON file"
    )
