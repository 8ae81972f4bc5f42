"""BIG-bench loading: a small synthetic archive for the extraction logic, the real 1.0.0 archive for real tasks."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from dataeff import bigbench
from dataeff.bigbench import (
    export_task,
    extract_task_json,
    fetch_bigbench_archive,
    list_tasks,
    load_bigbench_task,
    split_examples,
)
from dataeff.data import Example, read_jsonl
from dataeff.errors import DataError

SYNTHETIC = {
    "sports_understanding": {
        "examples": [
            {"input": "Jamal Murray was perfect from the line", "target_scores": {"plausible": 1, "implausible": 0}},
            {"input": "Tom Brady hit a home run", "target_scores": {"plausible": 0, "implausible": 1}},
            {"input": "Messi scored a penalty", "target_scores": {"plausible": 1, "implausible": 0}},
        ]
    },
    "color_quiz": {
        "task_prefix": "Name the color.",
        "example_input_prefix": "\nThing: ",
        "example_output_prefix": "\nColor: ",
        "examples": [
            {"input": f"thing {i}", "target_scores": {"red": int(i % 2 == 0), "blue": int(i % 2 == 1)}}
            for i in range(10)
        ],
    },
    "qa_wikidata": {
        "examples": [
            {"input": "The capital of France is", "target": ["Paris", "Paris, France"]},
            {"input": "The author of Hamlet is", "target": "William Shakespeare"},
        ]
    },
    "capital_quiz": {"examples": [{"input": "Capital of Italy?", "target": "Rome"}]},
    "bad_targets": {"examples": [{"input": "no answer here"}]},
    "parent/sub_one": {"examples": [{"input": "x", "target": "y"}]},
}


@pytest.fixture
def synthetic_archive(tmp_path, monkeypatch):
    """A bigbench-like source archive with a few tasks; the cache points into tmp_path."""
    archive = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, spec in SYNTHETIC.items():
            for member, payload in [
                (f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}/task.json", json.dumps(spec)),
                (f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}/README.md", "readme"),
            ]:
                data = payload.encode()
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("DATAEFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DATAEFF_BIGBENCH_ARCHIVE", str(archive))
    return archive


def test_extract_only_the_member_and_cache_it(synthetic_archive, tmp_path):
    path = extract_task_json("color_quiz")
    assert path == tmp_path / "cache" / "bigbench" / "tasks" / "color_quiz" / "task.json"
    assert json.loads(path.read_text())["task_prefix"] == "Name the color."
    extracted = sorted(p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert [str(p) for p in extracted] == ["bigbench/tasks/color_quiz/task.json"]
    synthetic_archive.unlink()  # second call is served from the cache
    assert extract_task_json("color_quiz") == path


def test_subtask_and_list(synthetic_archive):
    assert json.loads(extract_task_json("parent/sub_one").read_text())["examples"][0]["target"] == "y"
    assert set(list_tasks()) == set(SYNTHETIC)


def test_missing_task_lists_similar_names(synthetic_archive):
    with pytest.raises(DataError, match=r"no BIG-bench task 'sports_understandin'.*sports_understanding"):
        extract_task_json("sports_understandin")
    # the second miss is answered from the saved index, still naming similar tasks
    synthetic_archive.unlink()
    with pytest.raises(DataError, match=r"similar names: .*color_quiz"):
        extract_task_json("colour_quiz")
    with pytest.raises(DataError, match="malformed"):
        extract_task_json("../etc/passwd")


def test_archive_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAEFF_BIGBENCH_ARCHIVE", str(tmp_path / "nope.tar.gz"))
    with pytest.raises(DataError, match="DATAEFF_BIGBENCH_ARCHIVE.*no such file"):
        fetch_bigbench_archive()
    monkeypatch.delenv("DATAEFF_BIGBENCH_ARCHIVE")
    monkeypatch.setenv("DATAEFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bigbench, "_archive_candidates", lambda: [tmp_path / "absent.tar.gz"])
    with pytest.raises(DataError, match="archive not found"):
        fetch_bigbench_archive(download=False)


def test_choice_task_with_registry_format(synthetic_archive):
    task, examples = load_bigbench_task("sports_understanding")
    assert task.labels == ("yes", "no") and task.metric == "exact_match" and task.is_choice
    assert [e.answer for e in examples] == ["yes", "no", "yes"]
    assert [e.id for e in examples] == ["sports_understanding:0", "sports_understanding:1", "sports_understanding:2"]
    assert "Tom Brady hit a home run" in examples[1].prompt and "yes or no" in examples[1].prompt


def test_generic_format_uses_bigbench_prefixes_and_lists_options(synthetic_archive):
    task, examples = load_bigbench_task("color_quiz")
    assert task.labels == ("red", "blue")
    assert examples[3].prompt == "Name the color.\nThing: thing 3\nOptions: red, blue.\nColor:"
    assert examples[3].answer == "blue"


def test_free_form_targets_and_metric(synthetic_archive):
    task, examples = load_bigbench_task("qa_wikidata")
    assert task.labels is None and task.metric == "f1"
    assert examples[0].answer == "Paris" and examples[0].meta["targets"] == ["Paris", "Paris, France"]
    assert examples[1].answer == "William Shakespeare"
    assert examples[0].prompt == "Q: The capital of France is\nA:"
    assert load_bigbench_task("capital_quiz")[0].metric == "exact_match"
    with pytest.raises(DataError, match=r"example 0: neither 'target_scores' nor"):
        load_bigbench_task("bad_targets")


def test_max_examples_subset_keeps_stable_ids(synthetic_archive):
    _, full = load_bigbench_task("color_quiz")
    _, sub = load_bigbench_task("color_quiz", max_examples=4, seed=3)
    _, again = load_bigbench_task("color_quiz", max_examples=4, seed=3)
    assert [e.id for e in sub] == [e.id for e in again] and len(sub) == 4
    by_id = {e.id: e for e in full}
    assert all(by_id[e.id].prompt == e.prompt and by_id[e.id].answer == e.answer for e in sub)


def test_split_examples_deterministic_and_disjoint():
    examples = [Example(prompt=f"p{i}", answer="a", id=str(i)) for i in range(50)]
    pool, ev = split_examples(examples, 10, seed=1)
    assert len(ev) == 10 and len(pool) == 40
    assert {e.id for e in pool}.isdisjoint({e.id for e in ev})
    assert split_examples(examples, 10, seed=1) == (pool, ev)
    assert split_examples(examples, 10, seed=2)[1] != ev
    assert len(split_examples(examples, 0.2, seed=1)[1]) == 10
    for bad in (0, 50, 60):
        with pytest.raises(DataError, match=f"eval_size={bad} with 50 examples"):
            split_examples(examples, bad)


def test_export_task_and_cli(synthetic_archive, tmp_path, capsys):
    from app.cli import main

    paths = export_task("color_quiz", tmp_path / "out", eval_size=3)
    pool, ev = read_jsonl(paths["pool"]), read_jsonl(paths["eval"])
    assert len(pool) == 7 and len(ev) == 3
    assert json.loads(paths["task"].read_text())["labels"] == ["red", "blue"]
    assert {e.id for e in pool + ev} == {f"color_quiz:{i}" for i in range(10)}
    assert main(["data", "bigbench", "color_quiz", "--out", str(tmp_path / "cli"), "--eval-size", "2"]) == 0
    assert len(read_jsonl(tmp_path / "cli" / "eval.jsonl")) == 2
    assert main(["data", "bigbench", "no_such_task", "--out", str(tmp_path / "cli2")]) == 2
    assert "similar names" in capsys.readouterr().err


# ---------------------------------------------------------------- the real archive (cached extraction)
@pytest.mark.slow
def test_real_intent_recognition():
    task, examples = load_bigbench_task("intent_recognition")
    assert len(examples) == 693 and len(task.labels) == 7 and "play_music" in task.labels
    assert all(e.answer in task.labels for e in examples)
    assert "play_music" in examples[0].prompt and not examples[0].prompt.startswith("Utterance: Utterance")
    assert len({e.id for e in examples}) == 693


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, n, labels",
    [
        ("sports_understanding", 1000, ("yes", "no")),
        ("strategyqa", 2290, ("yes", "no")),
    ],
)
def test_real_yes_no_tasks(name, n, labels):
    task, examples = load_bigbench_task(name)
    assert len(examples) == n and task.labels == labels
    assert {e.answer for e in examples} == set(labels)


@pytest.mark.slow
def test_real_object_counting_is_free_form_with_digits():
    task, examples = load_bigbench_task("object_counting", max_examples=50)
    assert task.labels is None and task.metric == "exact_match"
    assert all(e.answer.isdigit() for e in examples)
    assert all(e.answer in e.meta["targets"] and len(e.meta["targets"]) == 2 for e in examples)
