"""Pure bookkeeping of a loop iteration, the assessment, and the project config."""

from __future__ import annotations

import pytest

from dataeff.assess import assess
from dataeff.calibration import get_calibration
from dataeff.data import Example, TaskSpec
from dataeff.errors import DataError
from dataeff.iteration import budgets_due, choose_eval_split, label_set_hash, next_batch, partition
from dataeff.project import ProjectConfig


def _ex(i, answer="yes"):
    return Example(prompt=f"p{i}", answer=answer, id=f"i{i}")


def test_partition_by_role_keeps_eval_out_of_training():
    labeled = [_ex(i) for i in range(10)]
    roles = {"i0": "lowconf", "i1": "lowconf", "i2": "eval", "i3": "eval"}
    sets = partition(labeled, roles)
    assert [e.id for e in sets.lowconf] == ["i0", "i1"]
    assert [e.id for e in sets.eval] == ["i2", "i3"]
    assert {e.id for e in sets.train} == {f"i{i}" for i in range(10)} - {"i2", "i3"}


def test_label_set_hash_ignores_order_and_sees_edits():
    a = [_ex(1), _ex(2, "no")]
    assert label_set_hash(a) == label_set_hash(list(reversed(a)))
    assert label_set_hash(a) != label_set_hash([_ex(1), _ex(2, "yes")])


def test_budgets_due_needs_the_eval_split_and_skips_done():
    assert budgets_due(120, (0, 50, 100, 200), done=(), eval_ready=False) == []
    assert budgets_due(120, (0, 50, 100, 200), done=(0,), eval_ready=True) == [50, 100]


def test_next_batch_is_stable_and_seeded():
    ids = [f"x{i}" for i in range(50)]
    first = next_batch(ids, 5, seed=0)
    assert first == next_batch(list(reversed(ids)), 5, seed=0)
    assert next_batch([i for i in ids if i != first[0]], 4, seed=0) == first[1:]
    assert first != next_batch(ids, 5, seed=1)


def test_eval_split_excludes_the_low_confidence_batch():
    ids = [f"x{i}" for i in range(30)]
    split = choose_eval_split(ids, 10, exclude=ids[:5], seed=0)
    assert len(split) == 10 and not set(split) & set(ids[:5])


def test_assess_is_the_paper_prediction_without_zero_shot_and_bends_with_points():
    cal = get_calibration("llama-3.1-8b-instruct")
    prior = assess(0.65, cal, {})
    assert prior.source == "prediction"
    assert prior.need(0.9).median == pytest.approx(cal.predict(0.65).need(0.9).median)
    # A task that saturates fast: measured points far above the prior curve pull the need down.
    fast = assess(0.65, cal, {0: 0.1, 50: 0.75, 100: 0.8}, n_eval=200)
    assert fast.source == "posterior"
    assert fast.need(0.9).median < prior.need(0.9).median
    assert fast.zero_shot == 0.1 and 0.8 <= fast.ceiling <= 1.0


def test_project_config_round_trip_and_errors(tmp_path, monkeypatch):
    cfg = ProjectConfig(name="tickets", task=TaskSpec(name="t", labels=("a", "b")))
    path = cfg.save(tmp_path)
    back = ProjectConfig.load("tickets", tmp_path)
    assert back.as_dict() == cfg.as_dict() and path.exists()
    with pytest.raises(DataError, match="project create"):
        ProjectConfig.load("missing", tmp_path)
    with pytest.raises(DataError, match="target"):
        ProjectConfig(name="x1", task=TaskSpec(name="t"), targets=(1.5,))
    with pytest.raises(DataError, match="name"):
        ProjectConfig(name="bad name!", task=TaskSpec(name="t"))
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(DataError, match="LABEL_STUDIO_API_KEY"):
        ProjectConfig(name="x2", task=TaskSpec(name="t")).label_studio_token()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "s3cr3t-token-value")
    assert cfg.label_studio_token() == "s3cr3t-token-value"
    cfg.save(tmp_path)
    assert "s3cr3t" not in path.read_text()  # the config names the variable, never holds the token
