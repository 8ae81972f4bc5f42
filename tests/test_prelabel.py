"""Which model answers become pre-annotations (dataeff/prelabel.py): pure logic."""

from __future__ import annotations

import pytest

from dataeff.errors import DataError
from dataeff.metrics import match_label
from dataeff.prelabel import PrelabelSettings, judge, plan_prelabels, strict_label

INTENTS = (
    "add_to_playlist",
    "book_restaurant",
    "get_weather",
    "play_music",
    "rate_book",
    "search_creative_work",
    "search_screening_event",
)


@pytest.mark.parametrize(
    "generation, expected",
    [
        ("get_weather", "get_weather"),
        ("Get weather.", "get_weather"),
        ("PLAY_MUSIC\nThe user wants a song.", "play_music"),
        ("rate_book because it asks for stars", "rate_book"),
        ("search_creative_work. Not play_music.", "search_creative_work"),  # only the first sentence counts
        # what the lenient scorer maps but a pre-annotation must not use:
        ("add_to_playlist, book_restaurant, get_weather, play_music", None),  # an echoed option list
        ("The intent is play_music.", None),  # not at the start
        ("get_wether", None),  # misspelt
        ("play_music or add_to_playlist", None),  # two labels
        ("I do not know", None),
        ("", None),
        (None, None),
    ],
)
def test_strict_label_names_exactly_one_label(generation, expected):
    assert strict_label(generation, INTENTS) == expected


def test_strict_label_is_stricter_than_the_scorer_and_never_falls_back():
    echoed = "add_to_playlist, book_restaurant, get_weather"
    assert match_label(echoed, INTENTS) == "add_to_playlist"  # how the demo's 677 answers became one label
    assert strict_label(echoed, INTENTS) is None
    assert strict_label("implausible. It is not plausible", ("plausible", "implausible")) == "implausible"
    assert strict_label("Plausible!", ("plausible", "implausible")) == "plausible"
    assert strict_label("Yes. No doubt about it.", ("Yes", "No")) == "Yes"
    assert strict_label("3.5 stars", ("3.5 stars", "4 stars")) == "3.5 stars"
    assert strict_label("play music", ("play music", "music")) == "play music"  # a label inside the chosen one
    with pytest.raises(DataError):
        strict_label("x", ())


def test_a_degenerate_guesser_pushes_nothing_and_says_why():
    # As measured on the SNIPS demo: every valid answer was the first option.
    scored = [(f"q{i}", "add_to_playlist", 0.4) for i in range(677)] + [(f"u{i}", "hmm", 0.1) for i in range(16)]
    plan = plan_prelabels(scored, INTENTS)
    assert not plan.push and plan.answers == {}
    assert plan.valid == 677 and len(plan.unmatched) == 16 and plan.label_counts == {"add_to_playlist": 677}
    assert "677 of the model's 677 answers (100%) are 'add_to_playlist'" in plan.reason
    assert "more than 60%" in plan.reason and "7 labels" in plan.reason


def test_the_share_rule_threshold_and_its_limits():
    st = PrelabelSettings()
    six_of_ten = ["a"] * 6 + ["b", "c", "b", "c"]
    assert judge(six_of_ten, 3, st) == (True, "10 answers pre-annotated")  # 60% is not MORE than 60%
    assert judge(["a"] * 7 + ["b", "c", "b"], 3, st)[0] is False
    assert judge(["a"] * 9 + ["b"], 2, st)[0] is True  # two labels: a skewed task is common, not a sign
    assert judge(["a"] * 9, 3, st)[0] is True  # fewer than min_answers: not judged
    assert judge(["same text"] * 50, None, st)[0] is True  # free-form task: no share rule
    assert judge([], 3, st) == (False, "the model gave no answer that names exactly one label")
    assert judge(["a"] * 7 + ["b"] * 3, 3, PrelabelSettings(max_label_share=0.75))[0] is True


def test_a_known_poor_model_pushes_nothing():
    scored = [(f"q{i}", label, 0.5) for i, label in enumerate(INTENTS * 3)]
    assert plan_prelabels(scored, INTENTS, accuracy=0.7).push
    poor = plan_prelabels(scored, INTENTS, accuracy=0.14)
    assert not poor.push and poor.answers == {} and "measured accuracy 14% is below 50%" in poor.reason


def test_plan_keeps_exact_answers_with_their_confidence():
    scored = [("a", "Positive.", 0.9), ("b", "positive, negative", 0.8), ("c", "neutral", 0.2), ("d", None, 0.0)]
    plan = plan_prelabels(scored, ("positive", "negative", "neutral"))
    assert plan.push and dict(plan.answers) == {"a": ("positive", 0.9), "c": ("neutral", 0.2)}
    assert plan.unmatched == ("b", "d") and "2 answers named no label exactly" in plan.reason
    free = plan_prelabels([("a", "  Paris \n", 0.7), ("b", "   ", 0.1)], None)
    assert dict(free.answers) == {"a": ("Paris", 0.7)} and free.unmatched == ("b",)


@pytest.mark.parametrize(
    "kwargs", [{"max_label_share": 0}, {"max_label_share": 1.5}, {"min_accuracy": -0.1}, {"min_labels": 1}]
)
def test_settings_are_checked(kwargs):
    with pytest.raises(DataError):
        PrelabelSettings(**kwargs)


# ----------------------------------------------------------------------------- switching the shown model (issue 12)
def test_settings_from_a_project_override_names_unknown_keys():
    from dataeff.prelabel import settings_from

    assert settings_from(None) == PrelabelSettings()
    assert settings_from({"min_accuracy": 0.7}).min_accuracy == 0.7
    with pytest.raises(DataError, match=r"unknown keys \['min_acc'\]"):
        settings_from({"min_acc": 0.7})
    with pytest.raises(DataError):
        settings_from({"min_accuracy": 2})


BASE, B10 = "dataeff-m", "dataeff-m-lora-b10-0123abcd"


@pytest.mark.parametrize(
    "new, accuracy, shown, decided, decided_withheld, ours, action, withheld, says",
    [
        # a new model that passes the gate (or is not measured): re-score, whatever is shown
        (B10, 0.8, BASE, None, True, True, "rescore", False, f"re-scoring the queue with {B10}"),
        (B10, 0.8, "", None, True, True, "rescore", False, "re-scoring"),
        (BASE, None, "", None, True, True, "rescore", False, "re-scoring"),
        # the project already shows it: nothing to write
        (B10, 0.8, B10, None, True, True, "keep", False, "already shows"),
        (B10, 0.5, B10, "2 answers pre-annotated", False, True, "keep", False, "already shows"),
        # a model measured poor is not run, shown or not
        (B10, 0.3, BASE, None, True, True, "keep", True, "accuracy 30% is below 50%"),
        (BASE, 0.1, BASE, None, True, True, "keep", True, "accuracy 10% is below 50%"),
        # judged on the queue before: not run again
        (B10, 0.8, BASE, "a degenerate guesser", True, True, "keep", True, "a degenerate guesser"),
        (B10, 0.8, "", "pushed before", False, True, "keep", False, "pushed before"),
        # a model version someone else chose in Label Studio is left alone
        (B10, 0.8, "my-own-model", None, True, False, "keep", False, "not set by dataeff"),
    ],
)
def test_plan_switch(new, accuracy, shown, decided, decided_withheld, ours, action, withheld, says):
    from dataeff.prelabel import plan_switch

    plan = plan_switch(
        new, accuracy, shown, PrelabelSettings(), decided=decided, decided_withheld=decided_withheld, ours=ours
    )
    assert (plan.action, plan.withheld) == (action, withheld)
    assert says in plan.reason


def test_poor_versions_are_those_measured_below_the_threshold():
    from dataeff.prelabel import poor_versions

    found = poor_versions({BASE: 0.12, B10: 0.5, "dataeff-x": None}, PrelabelSettings())
    assert list(found) == [BASE] and "measured accuracy 12% is below 50%" in found[BASE]
    assert poor_versions({BASE: 0.12}, PrelabelSettings(min_accuracy=0.0)) == {}


def test_model_versions_name_the_model_and_the_adapter():
    from dataeff.adapters import AdapterInfo, adapter_model_version, base_model_version, budget_of_version

    info = AdapterInfo(model="smollm2", budget=100, train_hash="0a1b2c3d4e5f", score=0.5)
    assert base_model_version("smollm2") == "dataeff-smollm2"
    assert adapter_model_version(info) == "dataeff-smollm2-lora-b100-0a1b2c3d"
    assert budget_of_version(adapter_model_version(info), "smollm2") == 100
    assert budget_of_version("dataeff-smollm2", "smollm2") == 0
    for other in ("", "dataeff-withdrawn", "dataeff-other", "dataeff-smollm2-lora-bx-0a1b2c3d", "my-model"):
        assert budget_of_version(other, "smollm2") is None


def test_queue_order_is_priority_then_task_id():
    from dataeff.queue import queue_order

    items = {"a": (0, 5), "b": (1_000_003, 9), "c": (1_502, 2), "d": (1_503, 7), "e": (0, 1), "f": (None, 3)}
    assert queue_order(items) == ["b", "d", "c", "e", "f", "a"]
