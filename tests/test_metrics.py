"""Answer normalisation, exact match with the label-start rule, token F1, label matching."""

from __future__ import annotations

import pytest

from dataeff.errors import DataError
from dataeff.metrics import exact_match, match_label, normalize_answer, score_predictions, token_f1

INTENTS = (
    "add_to_playlist",
    "book_restaurant",
    "get_weather",
    "play_music",
    "search_screening_event",
    "search_creative_work",
    "rate_book",
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  The  Yes. ", "yes"),
        ("An apple, a pear!", "apple pear"),
        ("play_music", "play music"),
        ("old-fashioned", "old fashioned"),
        ("A", "a"),  # a gold answer that is itself an article survives
        ("don't", "dont"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("Yes.", "yes", True),
        ("yes, because the player plays basketball", "yes", True),
        ("no", "yes", False),
        ("implausible", "plausible", False),  # word boundary, not a substring
        ("plausible", "implausible", False),
        ("Play music", "play_music", True),
        ("a", "a", True),
        ("b", "a", False),
        ("", "a", False),
        ("a) the first one", "a", True),
        ("3", ["three", "3"], True),
        ("four", ["three", "3"], False),
        ("yesterday", "yes", False),
    ],
)
def test_exact_match(pred, gold, expected):
    assert exact_match(pred, gold) is expected


def test_exact_match_strict_rejects_rambling():
    assert exact_match("yes, sure", "yes", prefix=False) is False
    assert exact_match("Yes!", "yes", prefix=False) is True


def test_token_f1():
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(2 * (2 / 2) * (2 / 3) / (2 / 2 + 2 / 3))
    assert token_f1("Paris", "paris") == 1.0
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("x", "") == 0.0
    assert token_f1("moscow", ["Russia", "Moscow"]) == 1.0


def test_score_predictions_em_and_f1():
    preds = ["Yes.", "no", "maybe", "No, never"]
    golds = ["yes", "yes", "no", "no"]
    assert score_predictions(preds, golds) == pytest.approx(0.5)
    assert score_predictions(["new york city"], ["New York"], metric="f1") == pytest.approx(0.8)
    assert 0.0 <= score_predictions(preds, golds, metric="f1") <= 1.0


def test_score_predictions_errors_are_clear():
    with pytest.raises(DataError, match="3 predictions but 2 gold"):
        score_predictions(["a", "b", "c"], ["a", "b"])
    with pytest.raises(DataError, match="unknown metric 'bleu'"):
        score_predictions(["a"], ["a"], metric="bleu")
    with pytest.raises(DataError, match="empty"):
        score_predictions([], [])
    with pytest.raises(DataError, match="empty list"):
        exact_match("a", [])


@pytest.mark.parametrize(
    "pred, expected",
    [
        ("get_weather", "get_weather"),
        ("Get weather.", "get_weather"),
        ("The intent is play_music.", "play_music"),
        ("search_creative_work because it asks for a book", "search_creative_work"),
        ("get_wether", "get_weather"),  # misspelling
        ("I do not know", None),
        ("", None),
    ],
)
def test_match_label_intents(pred, expected):
    assert match_label(pred, INTENTS) == expected


def test_match_label_word_boundaries_and_short_labels():
    assert match_label("Implausible.", ("plausible", "implausible")) == "implausible"
    assert match_label("it is plausible", ("plausible", "implausible")) == "plausible"
    assert match_label("b", ("a", "b")) == "b"
    assert match_label("A", ("a", "b")) == "a"
    assert match_label("Yes", ("Yes", "No")) == "Yes"
    with pytest.raises(DataError):
        match_label("x", ())
