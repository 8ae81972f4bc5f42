"""Answer normalisation and scores: exact match (with a label-start rule), token F1, label matching.

Normalisation follows SQuAD's evaluation script: lower-case, drop punctuation and the articles
"a", "an", "the", collapse whitespace. Two deliberate differences:

- ``_`` and ``-`` separate words instead of vanishing, so the label ``play_music`` and the
  generation ``play music`` normalise alike;
- when removing articles would leave nothing (the gold answer ``"a"`` of a two-option task),
  the articles are kept.

A gold answer may be one string or a sequence of acceptable strings (e.g. ``["three", "3"]``):
the best score over the alternatives counts.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

from dataeff.errors import DataError

METRICS = ("exact_match", "f1")

_SEPARATORS = "_-"
_DELETE = "".join(c for c in string.punctuation if c not in _SEPARATORS)
_TABLE = str.maketrans({**{c: None for c in _DELETE}, **{c: " " for c in _SEPARATORS}})
_ARTICLES = re.compile(r"\b(a|an|the)\b")

Gold = str | Sequence[str]


def _basic(text: str) -> str:
    """Lower-case, punctuation removed (``_``/``-`` become spaces), whitespace collapsed."""
    return " ".join(str(text).lower().translate(_TABLE).split())


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation of one answer string.

    Args:
        text: a generation or a gold answer.

    Returns:
        The lower-cased text without punctuation and articles, words separated by single spaces.
        Articles are kept when removing them would leave an empty string (``"a"`` stays ``"a"``).

    Examples:
        >>> normalize_answer("  The Yes. ")
        'yes'
        >>> normalize_answer("play_music")
        'play music'
        >>> normalize_answer("A")
        'a'
    """
    basic = _basic(text)
    stripped = " ".join(_ARTICLES.sub(" ", basic).split())
    return stripped or basic


def _starts_with(pred: str, gold: str) -> bool:
    """``pred`` equals ``gold`` or begins with it followed by a word boundary (both normalised)."""
    return bool(gold) and (pred == gold or pred.startswith(gold + " "))


def _alternatives(gold: Gold) -> list[str]:
    if isinstance(gold, str):
        return [gold]
    alts = [str(g) for g in gold]
    if not alts:
        raise DataError("a gold answer is an empty list; give at least one acceptable answer")
    return alts


def exact_match(pred: str, gold: Gold, *, prefix: bool = True) -> bool:
    """Whether a prediction matches the gold answer after normalisation.

    Args:
        pred: the model's generation (free text, may ramble after the answer).
        gold: the gold answer, or a sequence of acceptable answers.
        prefix: also accept a prediction whose normalised *start* is the normalised gold, up to a
            word boundary: ``"Yes. Because ..."`` matches ``"yes"``, ``"implausible"`` does not
            match ``"plausible"``. This is the rule for choice tasks and short answers (default
            True); pass False for strict equality.

    Returns:
        True when any acceptable answer matches. An empty gold never matches.
    """
    for g in _alternatives(gold):
        p_norm, g_norm = normalize_answer(pred), normalize_answer(g)
        if not g_norm:
            continue
        if p_norm == g_norm:
            return True
        if prefix and (_starts_with(p_norm, g_norm) or _starts_with(_basic(pred), _basic(g))):
            return True
    return False


def token_f1(pred: str, gold: Gold) -> float:
    """SQuAD token F1 between normalised prediction and gold (best over alternatives).

    Returns:
        A float in [0, 1]; 1.0 when both normalise to empty, 0.0 when only one does.
    """
    best = 0.0
    for g in _alternatives(gold):
        p_toks, g_toks = normalize_answer(pred).split(), normalize_answer(g).split()
        if not p_toks or not g_toks:
            best = max(best, float(p_toks == g_toks))
            continue
        common = sum((Counter(p_toks) & Counter(g_toks)).values())
        if common == 0:
            continue
        precision, recall = common / len(p_toks), common / len(g_toks)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def score_predictions(
    preds: Sequence[str], golds: Sequence[Gold], metric: str = "exact_match", *, prefix: bool = True
) -> float:
    """Mean score of predictions against gold answers.

    Args:
        preds: n generations.
        golds: n gold answers (each a string or a sequence of acceptable strings).
        metric: ``"exact_match"`` (accuracy, see :func:`exact_match`) or ``"f1"`` (:func:`token_f1`).
        prefix: passed to :func:`exact_match`.

    Returns:
        The mean over the n items, a float in [0, 1].

    Raises:
        DataError: unknown metric, lengths differ, or no items.
    """
    if metric not in METRICS:
        raise DataError(f"unknown metric {metric!r}; use one of {METRICS}")
    if len(preds) != len(golds):
        raise DataError(f"{len(preds)} predictions but {len(golds)} gold answers; they must pair up one to one")
    if len(preds) == 0:
        raise DataError("no predictions to score; the evaluation set is empty")
    if metric == "f1":
        scores = [token_f1(p, g) for p, g in zip(preds, golds)]
    else:
        scores = [float(exact_match(p, g, prefix=prefix)) for p, g in zip(preds, golds)]
    return float(np.mean(scores))


def match_label(pred: str, labels: Sequence[str], *, cutoff: float = 0.8) -> str | None:
    """Map a free generation to the allowed label it names, or None.

    Rules, in order (all on normalised text):

    1. labels the prediction starts with (word boundary); the longest wins;
    2. labels that occur as whole words anywhere in the prediction; the earliest wins (ties: longest);
    3. the label closest to the prediction's first words by ``difflib`` similarity >= ``cutoff``
       (catches small misspellings such as ``"get weather"`` vs ``"get_wether"``).

    Args:
        pred: the generation.
        labels: the allowed labels (original spelling, returned as given).
        cutoff: similarity threshold of rule 3, in [0, 1].

    Returns:
        One of ``labels`` or None when nothing is close enough.
    """
    if not labels:
        raise DataError("match_label needs a non-empty label set")
    normed = {label: normalize_answer(label) for label in labels}
    basic_pred, norm_pred = _basic(pred), normalize_answer(pred)
    starts = [lab for lab, n in normed.items() if _starts_with(norm_pred, n) or _starts_with(basic_pred, _basic(lab))]
    if starts:
        return max(starts, key=lambda lab: len(normed[lab]))
    found = []
    for lab, n in normed.items():
        hit = re.search(rf"(?:^| ){re.escape(n)}(?: |$)", norm_pred) if n else None
        if hit:
            found.append((hit.start(), -len(n), lab))
    if found:
        return min(found)[2]
    if not norm_pred:
        return None
    by_norm: dict[str, str] = {}
    for lab, n in normed.items():
        by_norm.setdefault(n, lab)
    best, best_ratio = None, cutoff
    for n, lab in by_norm.items():
        head = " ".join(norm_pred.split()[: max(1, len(n.split()))])
        ratio = difflib.SequenceMatcher(None, head, n).ratio()
        if ratio >= best_ratio and (best is None or ratio > best_ratio):
            best, best_ratio = lab, ratio
    return best
