"""dataeff.data loaders: every bad row is reported as file:line with what to do."""

from __future__ import annotations

import json

import pytest

from dataeff.data import Example, TaskSpec, example_to_row, read_csv, read_examples, read_jsonl, require_labeled, write_jsonl
from dataeff.errors import DataEffError, DataError


def _jsonl(path, lines: list[str | bytes]):
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


def test_jsonl_round_trip_keeps_ids_and_meta(tmp_path):
    rows = [{"id": "a1", "prompt": "Is it plausible?", "answer": "yes", "split": "train"},
            {"prompt": "Ünïcode prompt", "answer": 3}]
    path = write_jsonl(tmp_path / "sub" / "x.jsonl", rows)
    examples = read_jsonl(path)
    assert examples[0] == Example(prompt="Is it plausible?", answer="yes", id="a1")
    assert examples[0].meta == {"split": "train"}
    assert examples[1].prompt == "Ünïcode prompt" and examples[1].answer == "3" and examples[1].id == "1"
    assert read_jsonl(write_jsonl(tmp_path / "y.jsonl", [example_to_row(e) for e in examples])) == examples


def test_jsonl_blank_lines_skipped(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", ['{"prompt": "p", "answer": "a"}', "", "   ", '{"prompt": "q", "answer": "b"}'])
    assert [e.prompt for e in read_jsonl(path)] == ["p", "q"]


@pytest.mark.parametrize("bad_line, message", [
    ('{"answer": "yes"}', "missing or empty 'prompt'"),
    ('{"prompt": "   ", "answer": "yes"}', "missing or empty 'prompt'"),
    ('{"prompt": "p"}', "missing or empty 'answer'.*label this row or remove it"),
    ('{"prompt": "p", "answer": "  "}', "missing or empty 'answer'"),
    ('{"prompt": "p", "answer": "a"', "invalid JSON"),
    ('["prompt", "answer"]', "expected an object"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, bad_line, message):
    path = _jsonl(tmp_path / "x.jsonl", ['{"prompt": "ok", "answer": "a"}', "", bad_line])
    with pytest.raises(DataError, match=f"x.jsonl:3: {message}"):
        read_jsonl(path)


def test_jsonl_non_utf8_line(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", ['{"prompt": "ok", "answer": "a"}', b'{"prompt": "caf\xe9", "answer": "a"}'])
    with pytest.raises(DataError, match=r"x.jsonl:2: not valid UTF-8.*re-save the file as UTF-8"):
        read_jsonl(path)


def test_unlabeled_pool_allowed_when_asked(tmp_path):
    path = _jsonl(tmp_path / "pool.jsonl", ['{"prompt": "p"}', '{"prompt": "q", "answer": ""}'])
    examples = read_jsonl(path, require_answer=False)
    assert [e.answer for e in examples] == [None, ""]
    with pytest.raises(DataError, match="2 needed; label 1 more|0 labeled rows"):
        require_labeled(examples, 2, "pool")


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="no rows"):
        read_jsonl(_jsonl(tmp_path / "e.jsonl", ["", ""]))
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        read_examples(tmp_path / "x.txt")
    assert issubclass(DataError, DataEffError) and issubclass(DataError, ValueError)


def test_csv_reads_quoted_multiline_prompts(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text('prompt,answer,source\n"line one\nline two",yes,web\n"a, b",no,mail\n', encoding="utf-8")
    examples = read_examples(path)
    assert [e.prompt for e in examples] == ["line one\nline two", "a, b"]
    assert [e.answer for e in examples] == ["yes", "no"]
    assert examples[1].meta == {"source": "mail"} and examples[1].id == "1"


def test_csv_errors_name_file_and_line(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text('prompt,answer\n"first\nrow",yes\nsecond,\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x.csv:4: missing or empty 'answer'"):
        read_csv(path)
    assert [e.answer for e in read_csv(path, require_answer=False)] == ["yes", ""]
    path.write_bytes(b"prompt,answer\nok,yes\n\xff bad,no\n")
    with pytest.raises(DataError, match=r"x.csv:3: not valid UTF-8"):
        read_csv(path)
    path.write_text("text,label\nhello,yes\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x.csv: the header must name a 'prompt' column \(found \['text', 'label'\]\)"):
        read_csv(path)
    path.write_text("prompt,answer\n", encoding="utf-8")
    with pytest.raises(DataError, match="no rows under the header"):
        read_csv(path)


def test_taskspec_validates_metric():
    assert TaskSpec("t", labels=("a", "b")).is_choice
    assert not TaskSpec("t").is_choice
    with pytest.raises(DataError, match="task 't': metric must be"):
        TaskSpec("t", metric="accuracy")


def test_write_jsonl_is_utf8(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "é", "answer": "ü"}])
    assert json.loads(path.read_text(encoding="utf-8")) == {"prompt": "é", "answer": "ü"}
    assert "é" in path.read_text(encoding="utf-8")
