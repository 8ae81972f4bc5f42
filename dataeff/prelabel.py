"""Pre-annotations that help annotators: which model answers may be shown as pre-selected labels.

A pre-annotation is pre-ticked in the labeling stream; one click on Submit saves it. A wrong one
therefore costs more than none, so dataeff pre-annotates only when the answer is unambiguous and
the model is not known to be poor:

1. **Exact labels only** (:func:`strict_label`). The answer's first sentence must name exactly one
   of the task's labels (case, punctuation, ``_``/``-`` and articles aside), either as the whole
   sentence or at its start, and no other label. There is no fuzzy match and no fallback: a
   generation that echoes the option list (``"add_to_playlist, book_restaurant, ..."``) or names
   nothing gets no pre-annotation. (:func:`dataeff.metrics.match_label` is the lenient mapping
   used for *scoring*; it picks the earliest label named anywhere, which turns an echoed option
   list into the first option.)
2. **No degenerate guesser** (:func:`judge`). On a choice task with at least
   :attr:`PrelabelSettings.min_labels` labels, when one label is more than
   :attr:`PrelabelSettings.max_label_share` of the model's valid answers, the model is guessing
   one class: nothing is pushed. Measured on the SNIPS intents demo: all 677 valid answers were
   ``add_to_playlist`` and agreed with the annotators on 14% of items.
3. **No known-poor model**. When the model's accuracy is known (e.g. zero-shot on a labeled eval
   split, or a fine-tune's score at its budget) and below :attr:`PrelabelSettings.min_accuracy`,
   nothing is pushed, and pre-annotations of that model already pushed (the bootstrap's, made
   before the zero-shot score was known) are withdrawn (:func:`poor_versions`).

When a fine-tuned adapter becomes the best model, the loop re-scores the queue with it once
(:func:`plan_switch`).

Pure: no service is called; the callers (``flows/bootstrap.py``, ``flows/predictions.py``) push and log.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

from dataeff.errors import DataError
from dataeff.metrics import normalize_answer

_SENTENCE_END = re.compile(r"[.!?;:\n](?:\s|$)|\n")


@dataclass(frozen=True)
class PrelabelSettings:
    """Thresholds of the pre-annotation rules.

    Attributes:
        max_label_share: a choice task's pre-annotations are withheld when one label is MORE than
            this share of the valid answers (a degenerate guesser), in (0, 1].
        min_labels: the share rule applies to choice tasks with at least this many labels (with two
            labels, 60% of one class is common and not a sign of guessing).
        min_answers: the share rule needs at least this many valid answers to judge (fewer are
            pushed as they are).
        min_accuracy: withhold all pre-annotations when the model's known accuracy (agreement with
            annotators, e.g. zero-shot on the eval split) is below this, in [0, 1]; a pre-ticked
            label that is wrong half of the time costs more clicks than it saves.
    """

    max_label_share: float = 0.6
    min_labels: int = 3
    min_answers: int = 10
    min_accuracy: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.max_label_share <= 1:
            raise DataError(f"max_label_share must be in (0, 1], got {self.max_label_share}")
        if not 0 <= self.min_accuracy <= 1:
            raise DataError(f"min_accuracy must be in [0, 1], got {self.min_accuracy}")
        if self.min_labels < 2 or self.min_answers < 1:
            raise DataError("min_labels must be >= 2 and min_answers >= 1")


@dataclass(frozen=True)
class PrelabelPlan:
    """What to pre-annotate and why.

    Attributes:
        answers: ``item id -> (label_or_text, score)`` to push; empty when withheld.
        push: whether any pre-annotation is pushed.
        reason: one sentence for the log (why pushed or withheld).
        valid: answers that passed rule 1 (before rules 2-3).
        unmatched: items whose answer named no label exactly (no pre-annotation for them).
        label_counts: valid answers per label (choice tasks).
    """

    answers: Mapping[str, tuple[str, float]]
    push: bool
    reason: str
    valid: int
    unmatched: tuple[str, ...] = ()
    label_counts: Mapping[str, int] = field(default_factory=dict)


def _first_sentence(text: str) -> str:
    return _SENTENCE_END.split(str(text).strip(), maxsplit=1)[0]


def _mentions(norm_text: str, norm_label: str) -> bool:
    return bool(norm_label) and re.search(rf"(?:^| ){re.escape(norm_label)}(?: |$)", norm_text) is not None


def strict_label(generation: str | None, labels: Sequence[str]) -> str | None:
    """The label that ``generation`` names exactly and alone, or ``None``.

    The first sentence (up to ``.``/``!``/``?``/``;``/``:`` followed by a space, or a newline) is
    normalised like the scores do (:func:`dataeff.metrics.normalize_answer`); it must equal a
    label or begin with one at a word boundary (the longest such label), and mention no other
    label (labels contained in the chosen one, like ``plausible`` in ``implausible``, aside).

    Args:
        generation: the model's answer (``None``/empty: no label).
        labels: the task's labels, returned in their original spelling.

    Returns:
        One of ``labels`` or ``None``; never a default.

    Raises:
        DataError: ``labels`` is empty.

    Examples:
        >>> strict_label("Play music.", ["play_music", "get_weather"])
        'play_music'
        >>> strict_label("play_music, get_weather", ["play_music", "get_weather"]) is None
        True
    """
    if not labels:
        raise DataError("strict_label needs a non-empty label set")
    if not generation or not str(generation).strip():
        return None
    sentence = normalize_answer(_first_sentence(generation))
    if not sentence:
        return None
    normed: dict[str, str] = {}
    for label in labels:
        normed.setdefault(normalize_answer(label), label)  # two labels that normalise alike: the first
    starts = [n for n in normed if n and (sentence == n or sentence.startswith(n + " "))]
    if not starts:
        return None
    chosen = max(starts, key=len)
    others = [n for n in normed if n != chosen and not _mentions(chosen, n)]
    if any(_mentions(sentence, n) for n in others):
        return None
    return normed[chosen]


def settings_from(overrides: Mapping[str, object] | None) -> PrelabelSettings:
    """:class:`PrelabelSettings` with a project's overrides (``ProjectConfig.prelabel``).

    Raises:
        DataError: an unknown key (the known ones are named) or a value out of range.
    """
    known = {f.name for f in fields(PrelabelSettings)}
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise DataError(f"pre-annotation settings: unknown keys {unknown}; known: {sorted(known)}")
    return PrelabelSettings(**dict(overrides or {}))  # type: ignore[arg-type]


def accuracy_withheld(accuracy: float | None, settings: PrelabelSettings) -> str | None:
    """Rule 3 alone: the reason to withhold every pre-annotation of a model whose measured accuracy is
    below :attr:`PrelabelSettings.min_accuracy`, or ``None`` (passes, or not measured)."""
    if accuracy is None or accuracy >= settings.min_accuracy:
        return None
    return (
        f"the model's measured accuracy {accuracy:.0%} is below {settings.min_accuracy:.0%}: "
        "its pre-selected labels would mislead annotators more often than help"
    )


def judge(
    answers: Sequence[str], n_labels: int | None, settings: PrelabelSettings, accuracy: float | None = None
) -> tuple[bool, str]:
    """Rules 2 and 3 on the valid answers: ``(push, reason)``.

    Args:
        answers: the valid answers (labels for a choice task, texts for a free-form one).
        n_labels: the task's number of labels (``None``: free-form task, no share rule).
        settings: thresholds.
        accuracy: the model's known agreement with annotators, when measured.
    """
    if not answers:
        return False, "the model gave no answer that names exactly one label"
    poor = accuracy_withheld(accuracy, settings)
    if poor is not None:
        return False, poor
    if n_labels is not None and n_labels >= settings.min_labels and len(answers) >= settings.min_answers:
        top, count = Counter(answers).most_common(1)[0]
        share = count / len(answers)
        if share > settings.max_label_share:
            return False, (
                f"{count:,} of the model's {len(answers):,} answers ({share:.0%}) are {top!r}, more than "
                f"{settings.max_label_share:.0%} on a task with {n_labels} labels: a degenerate guesser, "
                "so no label is pre-selected"
            )
    return True, f"{len(answers):,} answers pre-annotated"


def plan_prelabels(
    scored: Iterable[tuple[str, str | None, float]],
    labels: Sequence[str] | None,
    settings: PrelabelSettings | None = None,
    *,
    accuracy: float | None = None,
) -> PrelabelPlan:
    """Which of the model's answers to push as pre-annotations (all three rules).

    Args:
        scored: ``(item id, generation, confidence)`` per item; the confidence becomes the
            prediction's score.
        labels: the task's labels (``None``/empty: a free-form task, the stripped text is the
            answer).
        settings: thresholds (default :class:`PrelabelSettings`).
        accuracy: the model's measured accuracy, when known (rule 3).

    Returns:
        A :class:`PrelabelPlan`; its ``answers`` are empty when the rules withhold them.
    """
    st = settings or PrelabelSettings()
    valid: dict[str, tuple[str, float]] = {}
    unmatched: list[str] = []
    for item_id, generation, confidence in scored:
        if labels:
            answer = strict_label(generation, labels)
        else:
            answer = str(generation).strip() if generation and str(generation).strip() else None
        if answer is None:
            unmatched.append(str(item_id))
            continue
        valid[str(item_id)] = (answer, float(confidence))
    values = [a for a, _ in valid.values()]
    push, reason = judge(values, len(labels) if labels else None, st, accuracy)
    if push and unmatched:
        reason += f"; {len(unmatched):,} answers named no label exactly and get none"
    return PrelabelPlan(
        answers=valid if push else {},
        push=push,
        reason=reason,
        valid=len(valid),
        unmatched=tuple(unmatched),
        label_counts=dict(Counter(values)) if labels else {},
    )


KEEP, RESCORE = "keep", "rescore"
"""Actions of :class:`SwitchPlan`."""


@dataclass(frozen=True)
class SwitchPlan:
    """Whether to re-score the annotation queue with the current model.

    Attributes:
        action: :data:`KEEP` (score and write nothing) or :data:`RESCORE` (score the queue with the
            current model and push what the rules allow under its model version, which becomes the
            project's).
        reason: one sentence for the log and the iteration summary.
        withheld: the current model's answers are withheld by the rules (its measured accuracy, or
            an earlier judgement on the queue such as a degenerate guesser).
    """

    action: str
    reason: str
    withheld: bool = False


def plan_switch(
    new_version: str,
    new_accuracy: float | None,
    shown_version: str,
    settings: PrelabelSettings,
    *,
    decided: str | None = None,
    decided_withheld: bool = True,
    ours: bool = True,
) -> SwitchPlan:
    """Whether the loop re-scores the annotation queue with the current model (one judgement per model).

    Label Studio pre-annotates with the predictions of the project's model version, so pushing
    a new model's answers under its own version and making it the project's replaces what
    annotators see. In order:

    1. A version dataeff did not set (``ours`` false: the team chose another model in Label
       Studio) is left as it is.
    2. A model measured below :attr:`PrelabelSettings.min_accuracy` is not run: withheld.
    3. The project already shows ``new_version``: nothing to do.
    4. The model was judged on the queue before (``decided``; e.g. the rules found a degenerate
       guesser, ``decided_withheld``): not run again.
    5. Otherwise re-score.

    Pre-annotations already shown stay unless their own model is known to be poor
    (:func:`poor_versions`).

    Args:
        new_version: model version of the current model.
        new_accuracy: its measured accuracy (``None``: not measured).
        shown_version: the project's model version now (``""``: none).
        settings: thresholds (:attr:`PrelabelSettings.min_accuracy`).
        decided: the recorded outcome of an earlier judgement of ``new_version`` on the queue.
        decided_withheld: that judgement withheld the answers.
        ours: ``shown_version`` is empty or one that dataeff set.
    """
    if not ours:
        return SwitchPlan(KEEP, f"the project shows model version {shown_version!r}, not set by dataeff; left as it is")
    poor = accuracy_withheld(new_accuracy, settings)
    if poor is not None:
        return SwitchPlan(KEEP, poor, withheld=True)
    if new_version == shown_version:
        return SwitchPlan(KEEP, f"the project already shows the pre-annotations of {new_version}")
    if decided is not None:
        return SwitchPlan(KEEP, decided, withheld=decided_withheld)
    return SwitchPlan(RESCORE, f"re-scoring the queue with {new_version}")


def poor_versions(accuracy_of: Mapping[str, float | None], settings: PrelabelSettings) -> dict[str, str]:
    """The model versions whose pre-annotations are to be withdrawn: ``{version: reason}`` for each
    version whose model's measured accuracy is below :attr:`PrelabelSettings.min_accuracy` (e.g. the
    base model's answers pushed at bootstrap, once its zero-shot score is known).

    Args:
        accuracy_of: ``{model version: measured accuracy or None (unknown: kept)}``.
        settings: thresholds.
    """
    out = {}
    for version, accuracy in accuracy_of.items():
        reason = accuracy_withheld(accuracy, settings)
        if reason is not None:
            out[version] = reason
    return out


__all__ = [
    "KEEP",
    "RESCORE",
    "PrelabelPlan",
    "PrelabelSettings",
    "SwitchPlan",
    "accuracy_withheld",
    "judge",
    "plan_prelabels",
    "plan_switch",
    "poor_versions",
    "settings_from",
    "strict_label",
]
