"""dataeff.data loaders: every bad row is reported as file:line with what to do."""

from __future__ import annotations

import json

import pytest

from dataeff.data import (
    Example,
    RejectedRow,
    TaskSpec,
    example_to_row,
    read_csv,
    read_examples,
    read_jsonl,
    read_rows,
    require_labeled,
    write_jsonl,
)
from dataeff.errors import DataEffError, DataError


def _jsonl(path, lines: list[str | bytes]):
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


def test_jsonl_round_trip_keeps_ids_and_meta(tmp_path):
    rows = [
        {"id": "a1", "prompt": "Is it plausible?", "answer": "yes", "split": "train"},
        {"prompt": "Ünïcode prompt", "answer": 3},
    ]
    path = write_jsonl(tmp_path / "sub" / "x.jsonl", rows)
    examples = read_jsonl(path)
    assert examples[0] == Example(prompt="Is it plausible?", answer="yes", id="a1")
    assert examples[0].meta == {"split": "train"}
    assert examples[1].prompt == "Ünïcode prompt" and examples[1].answer == "3" and examples[1].id == "1"
    assert read_jsonl(write_jsonl(tmp_path / "y.jsonl", [example_to_row(e) for e in examples])) == examples


def test_jsonl_blank_lines_skipped(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", ['{"prompt": "p", "answer": "a"}', "", "   ", '{"prompt": "q", "answer": "b"}'])
    assert [e.prompt for e in read_jsonl(path)] == ["p", "q"]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"answer": "yes"}', "missing or empty 'prompt'"),
        ('{"prompt": "   ", "answer": "yes"}', "missing or empty 'prompt'"),
        ('{"prompt": "p"}', "missing or empty 'answer'.*label this row or remove it"),
        ('{"prompt": "p", "answer": "  "}', "missing or empty 'answer'"),
        ('{"prompt": "p", "answer": "a"', "invalid JSON"),
        ('["prompt", "answer"]', "expected an object"),
    ],
)
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


def _thirty_rows_with_two_bad(tmp_path):
    lines = [json.dumps({"id": f"q{i:02d}", "prompt": f"prompt {i}"}) for i in range(1, 31)]
    lines[4] = '{"id": "q05", "prompt": "unterminated'
    lines[20] = '{"id": "q21", "text": "prompt under the wrong key"}'
    return _jsonl(tmp_path / "pool.jsonl", lines)


def test_read_rows_keeps_the_good_rows_and_names_every_bad_one(tmp_path):
    path = _thirty_rows_with_two_bad(tmp_path)
    result = read_rows(path, require_answer=False)
    assert len(result.examples) == 28 and {"q05", "q21"}.isdisjoint(e.id for e in result.examples)
    assert [(r.line, r.id) for r in result.rejected] == [(5, None), (21, "q21")]
    assert str(result.rejected[0]).startswith(f"{path}:5: invalid JSON")
    assert (
        str(result.rejected[1])
        == f"{path}:21 (id 'q21'): missing or empty 'prompt' field; every row needs a non-empty prompt string"
    )
    assert result.rejected[1].as_dict() == {
        "file": str(path),
        "line": 21,
        "id": "q21",
        "reason": result.rejected[1].reason,
    }


def test_strict_reading_names_every_bad_row_and_reads_nothing(tmp_path):
    path = _thirty_rows_with_two_bad(tmp_path)
    with pytest.raises(DataError, match=r"pool.jsonl: 2 bad rows, so nothing was read") as info:
        read_examples(path, require_answer=False)
    assert f"{path}:5: invalid JSON" in str(info.value) and f"{path}:21 (id 'q21')" in str(info.value)


@pytest.mark.parametrize(
    "lines, line, reason",
    [
        (['{"id": "a", "prompt": "p"}', '{"id": "a", "prompt": "q"}'], 2, "duplicate id 'a' (first on line 1)"),
        (['{"prompt": "p"}', '{"id": "0", "prompt": "q"}'], 2, "duplicate id '0' (first on line 1)"),
        (['{"id": "a", "prompt": "p"}', '{"id": " ", "prompt": "q"}'], 2, "empty 'id' field"),
        (['{"id": "a", "prompt": "p"}', b'{"prompt": "caf\xe9"}'], 2, "not valid UTF-8"),
        (['{"id": "a", "prompt": "p"}', "", '"just a string"'], 3, "expected an object"),
    ],
)
def test_each_kind_of_bad_row_is_named(tmp_path, lines, line, reason):
    result = read_rows(_jsonl(tmp_path / "x.jsonl", lines), require_answer=False)
    assert len(result.examples) == 1 and [r.line for r in result.rejected] == [line]
    assert reason in result.rejected[0].reason


def test_ids_by_position_do_not_shift_past_a_bad_row(tmp_path):
    bad = read_rows(
        _jsonl(tmp_path / "a.jsonl", ['{"prompt": "p"}', "oops", "", '{"prompt": "r"}']), require_answer=False
    )
    fixed = read_jsonl(
        _jsonl(tmp_path / "b.jsonl", ['{"prompt": "p"}', '{"prompt": "q"}', "", '{"prompt": "r"}']),
        require_answer=False,
    )
    assert [e.id for e in bad.examples] == ["0", "2"] and [e.id for e in fixed] == ["0", "1", "2"]


def test_a_file_without_one_good_row_is_an_error_naming_them(tmp_path):
    with pytest.raises(
        DataError, match=r"(?s)2 bad rows, not one good row.*x.jsonl:1: invalid JSON.*x.jsonl:2: missing"
    ):
        read_rows(_jsonl(tmp_path / "x.jsonl", ["oops", '{"answer": "a"}']), require_answer=False)


def test_csv_rows_with_bad_bytes_or_fields_are_reported_and_the_rest_read(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b'id,prompt,answer\na,ok,yes\nb,\xff bad,no\nc,,yes\nd,"multi\nline",no\na,dup,yes\n')
    result = read_rows(path)
    assert [e.id for e in result.examples] == ["a", "d"]
    assert [(r.line, r.id) for r in result.rejected] == [(3, None), (4, "c"), (7, "a")]
    assert "not valid UTF-8 (byte 0xff)" in result.rejected[0].reason
    assert isinstance(result.rejected[0], RejectedRow)
