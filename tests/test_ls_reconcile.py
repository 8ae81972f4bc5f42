"""Reconciliation of a pull with the last cursor: pure, plain dicts in the shape Label Studio lists."""

from __future__ import annotations

import pytest

from integrations.ls_reconcile import Cursor, reconcile


def _ann(ann_id, answer, updated, *, cancelled=False, ground_truth=False, by=7):
    return {
        "id": ann_id,
        "result": answer,
        "was_cancelled": cancelled,
        "ground_truth": ground_truth,
        "updated_at": updated,
        "completed_by": by,
    }


def _task(task_id, item, *anns, prompt="Is it plausible?"):
    data = {"prompt": prompt} | ({"dataeff_id": item} if item else {})
    return {"id": task_id, "data": data, "annotations": list(anns)}


def _answer(result):
    if result not in ("yes", "no"):
        raise ValueError(f"label {result!r} is not in the config")
    return result


def test_the_counted_annotation_is_ground_truth_then_latest_and_cancelled_ones_never():
    tasks = [
        _task(1, "a", _ann(10, "yes", "2026-01-01T00:00:00"), _ann(11, "no", "2026-01-02T00:00:00")),
        _task(2, "b", _ann(20, "no", "2026-01-05T00:00:00"), _ann(21, "yes", "2026-01-01T00:00:00", ground_truth=True)),
        _task(3, "c", _ann(30, "no", "2026-01-09T00:00:00", cancelled=True)),
    ]
    out = reconcile(tasks, _answer, annotator_of=lambda uid: f"user{uid}")
    assert {e.id: e.answer for e in out.examples} == {"a": "no", "b": "yes"}
    assert out.examples[0].meta["annotator"] == "user7" and out.examples[1].meta["ground_truth"]
    assert out.changed_ids == ("a", "b") and out.deleted_ids == ()
    assert out.cursor.updated_at == "2026-01-02T00:00:00"


def test_edits_replace_deletions_drop_out_and_nothing_changes_twice():
    first = reconcile(
        [_task(1, "a", _ann(10, "yes", "2026-01-01T00:00:00")), _task(2, "b", _ann(20, "no", "2026-01-01T00:00:00"))],
        _answer,
    )
    again = reconcile(
        [_task(1, "a", _ann(10, "yes", "2026-01-01T00:00:00")), _task(2, "b", _ann(20, "no", "2026-01-01T00:00:00"))],
        _answer,
        first.cursor,
    )
    assert again.changed_ids == () and again.deleted_ids == () and not again.has_changes
    edited = reconcile(
        [_task(1, "a", _ann(10, "no", "2026-01-03T00:00:00"))], _answer, Cursor.from_json(first.cursor.to_json())
    )
    assert edited.changed_ids == ("a",) and edited.deleted_ids == ("b",)
    assert first.cursor.seen["b"] == (20, "2026-01-01T00:00:00")  # the old cursor is never modified


def test_bad_items_are_named_and_the_rest_is_counted():
    tasks = [
        _task(1, "a", _ann(10, "maybe", "2026-01-01T00:00:00")),
        _task(2, "b", _ann(20, "yes", "2026-01-01T00:00:00"), prompt="  "),
        _task(3, None, _ann(30, "yes", "2026-01-01T00:00:00")),  # made by hand: no dataeff_id
        _task(4, "d", _ann(40, "no", "2026-01-01T00:00:00")),
        _task(5, "d", _ann(50, "yes", "2026-01-01T00:00:00")),  # the same id on a second task
    ]
    out = reconcile(tasks, _answer)
    assert [e.id for e in out.examples] == ["d"] and out.examples[0].answer == "no"
    assert out.unmanaged_task_ids == (3,)
    reasons = {(e.dataeff_id, e.task_id): e.reason for e in out.errors}
    assert "'maybe' is not in the config" in reasons[("a", 1)] and "fix it in Label Studio" in reasons[("a", 1)]
    assert "no 'prompt' text" in reasons[("b", 2)]
    assert "on several tasks" in reasons[("d", 5)]


def test_a_malformed_cursor_is_a_clear_error():
    from dataeff.errors import DataError

    with pytest.raises(DataError, match="malformed Label Studio cursor"):
        Cursor.from_dict({"seen": {"a": "nope"}})
